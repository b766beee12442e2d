#!/usr/bin/python3
"""Prepare the S3 bucket of Files Manager on Ceph RGW (or any S3 store): idempotent, safe to run at every start.

1. create the bucket when missing;
2. CORS for the web client's origins (browsers PUT to presigned URLs directly);
3. when an events URL is given: the RGW SNS-style topic whose push-endpoint is that URL, and the bucket
   notification sending s3:ObjectCreated:* and s3:ObjectRemoved:* for keys under the uploads prefix.

Every run also keeps the bucket private whatever a client sends with a presigned PUT (the URL does not sign
x-amz-acl or x-amz-grant-*, so a client could add `x-amz-acl: public-read` and read the object straight from the
store): a bucket policy denies PutObject with a public canned ACL or any grant header and denies ACL changes; the
public access block ignores public ACLs and refuses public policies; on AWS, Object Ownership = BucketOwnerEnforced
turns ACLs off altogether. See ensure_no_public_access.

Configuration from the environment (each also a command-line option, which wins):
  FM_S3_ENDPOINT, FM_S3_REGION (us-east-1), FM_S3_ACCESS_KEY, FM_S3_SECRET_KEY, FM_S3_BUCKET (files-manager)
  FM_WEB_ORIGIN             allowed browser origins, comma-separated
                            (default http://127.0.0.1:8080,http://localhost:8080)
  FM_S3_EVENTS_URL          webhook for the notifications, e.g. http://127.0.0.1:8080/v1/events/s3?secret=...
                            (empty: no topic/notification is made and existing ones are left alone)
  FM_S3_EVENTS_PERSISTENT   true|false (default true: RGW queues each event and delivers it again until the webhook
                            answers 2xx, so an event refused while fm-control cannot record it is not lost; a new
                            topic starts delivering within ~30 s (RGW looks for new queues every 30 s). false:
                            immediate delivery, an event is dropped when the webhook is down or answers an error.
                            docs/decisions.md "Local stack" has the measurements and RGW 16's known hang)
  FM_S3_TOPIC               topic name (default <bucket>-events)
  FM_S3_EVENTS_PREFIX       key prefix that raises events (default incoming/)

The events URL may carry a secret: it is never printed (query strings and user info are masked).
Run with /usr/bin/python3 (Debian's boto3).
"""
import argparse
import json
import os
import sys
import time
import urllib.parse

import boto3
import botocore.config
import botocore.exceptions

NOTIFICATION_ID = "files-manager-uploads"
EVENTS = ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]
CORS_METHODS = ["GET", "PUT", "POST", "HEAD"]


def _env(name, default=None):
    v = os.environ.get(name)
    return v if v not in (None, "") else default


def _bool(text):
    t = str(text).strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


def mask_url(url):
    """The URL without secrets: user info and the query string's values are replaced by ***."""
    try:
        u = urllib.parse.urlsplit(url)
        netloc = u.hostname or ""
        if u.port:
            netloc += f":{u.port}"
        query = "&".join(f"{k}=***" for k, _ in urllib.parse.parse_qsl(u.query, keep_blank_values=True))
        return urllib.parse.urlunsplit((u.scheme, netloc, u.path, query, ""))
    except ValueError:
        return "<unparsable URL>"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint", default=_env("FM_S3_ENDPOINT"))
    p.add_argument("--region", default=_env("FM_S3_REGION", "us-east-1"))
    p.add_argument("--access-key", default=_env("FM_S3_ACCESS_KEY"))
    p.add_argument("--secret-key", default=_env("FM_S3_SECRET_KEY"))
    p.add_argument("--bucket", default=_env("FM_S3_BUCKET", "files-manager"))
    p.add_argument("--web-origin", default=_env("FM_WEB_ORIGIN", "http://127.0.0.1:8080,http://localhost:8080"),
                   help="allowed CORS origins, comma-separated")
    p.add_argument("--events-url", default=_env("FM_S3_EVENTS_URL", ""))
    p.add_argument("--persistent", type=_bool, default=_bool(_env("FM_S3_EVENTS_PERSISTENT", "true")))
    p.add_argument("--topic", default=_env("FM_S3_TOPIC"))
    p.add_argument("--prefix", default=_env("FM_S3_EVENTS_PREFIX", "incoming/"))
    p.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the endpoint to answer")
    p.add_argument("-q", "--quiet", action="store_true")
    a = p.parse_args(argv)
    for name in ("endpoint", "access_key", "secret_key"):
        if not getattr(a, name):
            p.error(f"missing --{name.replace('_', '-')} (or FM_S3_{name.upper()})")
    a.topic = a.topic or f"{a.bucket}-events"
    a.origins = [o.strip() for o in a.web_origin.split(",") if o.strip()]
    if not a.origins:
        p.error("no web origin given")
    return a


def clients(a):
    cfg = botocore.config.Config(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        retries={"max_attempts": 5, "mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
    )
    kw = dict(endpoint_url=a.endpoint, region_name=a.region, aws_access_key_id=a.access_key,
              aws_secret_access_key=a.secret_key, config=cfg)
    return boto3.client("s3", **kw), boto3.client("sns", **kw)


def ensure_bucket(s3, bucket, wait_s):
    deadline = time.monotonic() + wait_s
    while True:
        try:
            s3.head_bucket(Bucket=bucket)
            return False
        except botocore.exceptions.ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code not in ("404", "NoSuchBucket", "NotFound"):
                raise
            break
        except botocore.exceptions.EndpointConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    try:
        s3.create_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError as e:
        if e.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
            raise
    return True


def ensure_cors(s3, bucket, origins):
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": [{
        "AllowedOrigins": origins,
        "AllowedMethods": CORS_METHODS,
        "AllowedHeaders": ["*"],
        "ExposeHeaders": ["ETag"],
        "MaxAgeSeconds": 3600,
    }]})


# --- no public access -----------------------------------------------------------------------------------------

POLICY_SID_PREFIX = "FilesManager"  # statements of ours in the bucket policy; others' are kept
PUBLIC_CANNED_ACLS = ["public-read", "public-read-write", "authenticated-read", "aws-exec-read", "log-delivery-write"]
GRANT_KEYS = ["s3:x-amz-grant-read", "s3:x-amz-grant-write", "s3:x-amz-grant-read-acp", "s3:x-amz-grant-write-acp",
              "s3:x-amz-grant-full-control"]
PROBE_KEY = ".fm-prepare/probe"  # outside the events prefix: raises no event


def deny_statements(bucket):
    """Deny statements that hold for every principal, the bucket's owner included (a presigned URL acts as the owner).

    Written so that they mean the same on AWS and on Ceph RGW 16, checked on RGW: StringEquals on s3:x-amz-acl (an
    absent header matches nothing) rather than `Null` or StringNotEquals, which RGW evaluates differently (it puts an
    s3:x-amz-acl value into every PutObject's context, and its `Null` is inverted); StringLike "*" on each grant key
    (present = denied)."""
    objects = f"arn:aws:s3:::{bucket}/*"
    statements = [{
        "Sid": f"{POLICY_SID_PREFIX}DenyPublicCannedAcl", "Effect": "Deny", "Principal": "*",
        "Action": "s3:PutObject", "Resource": objects,
        "Condition": {"StringEquals": {"s3:x-amz-acl": PUBLIC_CANNED_ACLS}},
    }]
    for key in GRANT_KEYS:
        name = "".join(part.capitalize() for part in key.split(":")[1].split("-")[3:])
        statements.append({
            "Sid": f"{POLICY_SID_PREFIX}DenyGrant{name}", "Effect": "Deny", "Principal": "*",
            "Action": "s3:PutObject", "Resource": objects, "Condition": {"StringLike": {key: "*"}},
        })
    statements.append({
        "Sid": f"{POLICY_SID_PREFIX}DenyAclChanges", "Effect": "Deny", "Principal": "*",
        "Action": ["s3:PutObjectAcl", "s3:PutObjectVersionAcl", "s3:PutBucketAcl"],
        "Resource": [f"arn:aws:s3:::{bucket}", objects],
    })
    return statements


def ensure_bucket_policy(s3, bucket):
    try:
        current = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    except botocore.exceptions.ClientError as e:
        if e.response.get("Error", {}).get("Code") != "NoSuchBucketPolicy":
            raise
        current = {}
    others = [st for st in current.get("Statement", []) if not str(st.get("Sid", "")).startswith(POLICY_SID_PREFIX)]
    policy = {"Version": "2012-10-17", "Statement": others + deny_statements(bucket)}
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    return len(others)


def owner_can_put(s3, bucket):
    """A plain PutObject by the owner works (then the probe object goes)."""
    try:
        s3.put_object(Bucket=bucket, Key=PROBE_KEY, Body=b"")
    except botocore.exceptions.ClientError as e:
        if e.response.get("Error", {}).get("Code") == "AccessDenied":
            return False
        raise
    s3.delete_object(Bucket=bucket, Key=PROBE_KEY)
    return True


def ensure_public_access_block(s3, bucket):
    """All four settings; BlockPublicAcls goes off again where the store then refuses every PutObject (Ceph RGW 16
    does: with it on, a PUT without any ACL header is AccessDenied too). IgnorePublicAcls still makes a public ACL
    inert there, and the policy refuses the PUT that carries one. Returns the settings in force."""
    config = {"BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
              "RestrictPublicBuckets": True}
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=config)
    if not owner_can_put(s3, bucket):
        config["BlockPublicAcls"] = False
        s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=config)
        if not owner_can_put(s3, bucket):
            raise RuntimeError("the bucket refuses its owner's PutObject even without BlockPublicAcls")
    return config


def ensure_owner_enforced(s3, bucket):
    """Object Ownership = BucketOwnerEnforced (AWS: ACLs disabled, a PUT with another ACL is refused). Returns False
    where the store does not know it (Ceph RGW 16 answers InvalidArgument): the policy above stands in for it."""
    try:
        s3.put_bucket_ownership_controls(
            Bucket=bucket, OwnershipControls={"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]})
        return True
    except botocore.exceptions.ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("InvalidArgument", "NotImplemented", "InvalidRequest",
                                                       "MalformedXML"):
            return False
        raise


def ensure_no_public_access(s3, bucket):
    """Policy first: with BlockPublicPolicy already on, a deny-only policy is still accepted (it is not public)."""
    kept = ensure_bucket_policy(s3, bucket)
    config = ensure_public_access_block(s3, bucket)
    enforced = ensure_owner_enforced(s3, bucket)
    return kept, config, enforced


def ensure_notifications(s3, sns, a):
    # RGW's SNS-compatible API: CreateTopic overwrites the attributes of an existing topic of that name.
    topic = sns.create_topic(Name=a.topic, Attributes={
        "push-endpoint": a.events_url,
        "persistent": "true" if a.persistent else "false",
    })
    arn = topic["TopicArn"]
    # The bucket notification keeps a copy of the topic's endpoint: put it again every time so that a changed
    # URL takes effect. Other notifications of the bucket (other ids) are kept.
    current = s3.get_bucket_notification_configuration(Bucket=a.bucket).get("TopicConfigurations", [])
    keep = [c for c in current if c.get("Id") != NOTIFICATION_ID]
    ours = {
        "Id": NOTIFICATION_ID,
        "TopicArn": arn,
        "Events": EVENTS,
        "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": a.prefix}]}},
    }
    for c in keep:  # what RGW returns is not always accepted back verbatim: keep only the S3 fields
        for k in list(c):
            if k not in ("Id", "TopicArn", "Events", "Filter"):
                del c[k]
    s3.put_bucket_notification_configuration(
        Bucket=a.bucket, NotificationConfiguration={"TopicConfigurations": keep + [ours]})
    return arn


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    say = (lambda *m: None) if a.quiet else (lambda *m: print("s3_prepare:", *m, file=sys.stderr))
    s3, sns = clients(a)
    created = ensure_bucket(s3, a.bucket, a.wait)
    say(f"bucket {a.bucket} {'created' if created else 'exists'} at {a.endpoint}")
    ensure_cors(s3, a.bucket, a.origins)
    say(f"CORS: origins {', '.join(a.origins)}; methods {' '.join(CORS_METHODS)}; exposes ETag")
    kept, block, enforced = ensure_no_public_access(s3, a.bucket)
    say(f"no public access: policy denies public ACLs and grants ({kept} other statements kept); public access "
        f"block {', '.join(k for k, v in block.items() if v)}; object ownership "
        f"{'BucketOwnerEnforced' if enforced else 'not supported by this store (the policy stands in)'}")
    if a.events_url:
        arn = ensure_notifications(s3, sns, a)
        say(f"events: {' '.join(EVENTS)} under '{a.prefix}' -> topic {arn} -> {mask_url(a.events_url)}"
            f" (persistent={'true' if a.persistent else 'false'})")
    else:
        say("events: FM_S3_EVENTS_URL not set, topic and notification left as they are")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, RuntimeError) as e:
        print(f"s3_prepare: error: {e}", file=sys.stderr)
        sys.exit(1)
