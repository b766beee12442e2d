#!/usr/bin/python3
"""Independent CloudFront signed-URL vectors for tests/unit/common/test_cfsign.c and test_cfverify.c: botocore +
cryptography.

Run by the C test through popen with Debian's /usr/bin/python3 (python3-botocore, python3-cryptography). A missing
module raises ImportError, exits non-zero, and the C test fails: it never skips.

  cfsign_vectors.py gen DIR NOW
      Generates the key pairs below into DIR (private PEM as <id>.pem, public as <id>.pub.pem) and prints one JSON
      object per line:
        {"type": "key", "id": ..., "alg": "rsa"|"ec", "configured": bool}
        {"type": "case", "name": ..., "key": ..., "url": ..., "resource": str|null, "dlt": int, "dgt": int,
         "ip": str|null, "sha256": bool, "force_custom": bool, "signed": <URL>, "compare": bool,
         "client_ip": str, "expect": <fm_cf_status_code>}
      Keys with "configured": false are not given to the C verifier (unknown_key). "compare" cases are made by
      botocore's CloudFrontSigner from the same inputs the C signer gets, with a deterministic RSA PKCS#1 v1.5
      signature: the C output must be byte-identical. The others are checked by verification only: ECDSA (random
      signatures), URLs signed by keys the C side lacks, and hand-written policies signed raw (not botocore's).
      Every case is to be verified at time NOW from "client_ip" with result "expect".

  cfsign_vectors.py verify DIR
      Reads lines "KEY_ID URL" on stdin (URLs signed by the C code) and verifies each independently: the policy is
      the decoded Policy parameter, or for a canned URL botocore's build_policy over the URL without the CloudFront
      parameters; the signature is checked with `cryptography` and DIR/<KEY_ID>.pub.pem under SHA-1, or SHA-256
      with Hash-Algorithm=SHA256. Prints {"ok": bool, "error": str} per line.

botocore 1.29 (Debian bookworm) has neither Hash-Algorithm nor ECDSA support of its own: its CloudFrontSigner
takes any signing callable, so SHA-256 and ECDSA vectors use it with a `cryptography` signer, and
"&Hash-Algorithm=SHA256" is appended last, as in the AWS Developer Guide's example URL.
"""

import base64
import datetime
import json
import os
import sys

from botocore.signers import CloudFrontSigner
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

CF_PARAMS = ("Expires", "Policy", "Signature", "Key-Pair-Id", "Hash-Algorithm")

# id -> (algorithm, configured in the C verifier)
KEYS = {
    "KRSACURRENT2024": ("rsa", True),
    "KRSAOLD2023": ("rsa", True),
    "KECP256CURRENT": ("ec", True),
    "KRSAUNKNOWN": ("rsa", False),
    "KSTRANGER": ("rsa", False),  # a key whose signatures are presented under a configured id
    "KECSTRANGER": ("ec", False),
}


def emit(obj):
    print(json.dumps(obj, separators=(",", ":")))


def utc(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)


def cf_b64(data):
    return base64.b64encode(data).replace(b"+", b"-").replace(b"=", b"_").replace(b"/", b"~").decode()


def cf_b64_decode(text):
    return base64.b64decode(text.replace("-", "+").replace("_", "=").replace("~", "/"), validate=True)


def signer_for(private_key, sha256):
    digest = hashes.SHA256() if sha256 else hashes.SHA1()
    if isinstance(private_key, rsa.RSAPrivateKey):
        return lambda message: private_key.sign(message, padding.PKCS1v15(), digest)
    return lambda message: private_key.sign(message, ec.ECDSA(digest))


def load_private(directory, key_id):
    with open(os.path.join(directory, key_id + ".pem"), "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


def gen(directory, now):
    private = {}
    for key_id, (alg, configured) in KEYS.items():
        if alg == "rsa":
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            key = ec.generate_private_key(ec.SECP256R1())
        private[key_id] = key
        with open(os.path.join(directory, key_id + ".pem"), "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        with open(os.path.join(directory, key_id + ".pub.pem"), "wb") as f:
            f.write(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
        emit({"type": "key", "id": key_id, "alg": alg, "configured": configured})

    client = "203.0.113.9"
    base = "https://cdn.example.com/files/018f3a2b"

    def case(name, url, expect, key="KRSACURRENT2024", resource=None, dlt=now + 300, dgt=0, ip=None,
             sha256=False, force_custom=False, client_ip=client, sign_as=None):
        """botocore CloudFrontSigner with the same rule as fm_cf_sign_url for canned vs custom."""
        signing_key = private[sign_as or key]
        signer = CloudFrontSigner(key, signer_for(signing_key, sha256))
        custom = force_custom or dgt != 0 or ip is not None or (resource is not None and resource != url) \
            or "*" in url
        if custom:
            policy = signer.build_policy(resource if resource is not None else url, utc(dlt),
                                         date_greater_than=utc(dgt) if dgt else None, ip_address=ip)
            signed = signer.generate_presigned_url(url, policy=policy)
        else:
            signed = signer.generate_presigned_url(url, date_less_than=utc(dlt))
        if sha256:
            signed += "&Hash-Algorithm=SHA256"
        compare = sign_as is None and KEYS[key] == ("rsa", True)
        emit({"type": "case", "name": name, "key": key, "url": url, "resource": resource, "dlt": dlt, "dgt": dgt,
              "ip": ip, "sha256": sha256, "force_custom": force_custom, "signed": signed, "compare": compare,
              "client_ip": client_ip, "expect": expect})

    def raw_policy_case(name, policy_text, expect, key="KRSACURRENT2024", url=base + "/report.pdf"):
        """A hand-written custom policy, signed as is (botocore never writes these)."""
        data = policy_text.encode() if isinstance(policy_text, str) else policy_text
        signature = signer_for(private[key], False)(data)
        signed = f"{url}?Policy={cf_b64(data)}&Signature={cf_b64(signature)}&Key-Pair-Id={key}"
        emit({"type": "case", "name": name, "key": key, "url": url, "resource": None, "dlt": 0, "dgt": 0,
              "ip": None, "sha256": False, "force_custom": True, "signed": signed, "compare": False,
              "client_ip": client, "expect": expect})

    # Canned policies (RSA-SHA1 unless said otherwise), compared byte for byte with the C signer.
    case("canned_plain", base + "/report.pdf", "ok")
    case("canned_query", base + "/photo.jpg?variant=thumb&format=webp", "ok")
    case("canned_percent_encoded", base + "/caf%C3%A9%20menu%E2%9C%93.pdf?download=%22x%22&n=1+2", "ok")
    case("canned_json_escapes", base + '/a"b\\c/d~e.txt', "ok")
    case("canned_empty_query", base + "/x.bin?", "ok")
    case("canned_trailing_amp", base + "/x.bin?a=1&", "ok")
    case("canned_http", "http://127.0.0.1:8443/files/018f3a2b/report.pdf", "ok")
    case("canned_expired_1s", base + "/report.pdf", "expired", dlt=now - 1)
    case("canned_expires_now", base + "/report.pdf", "expired", dlt=now)
    case("canned_expires_in_1s", base + "/report.pdf", "ok", dlt=now + 1)
    case("canned_sha256", base + "/report.pdf", "ok", sha256=True)
    case("canned_sha256_query", base + "/photo.jpg?w=200", "ok", sha256=True)
    case("canned_rotated_old_key", base + "/report.pdf", "ok", key="KRSAOLD2023")
    case("canned_resource_equals_url", base + "/report.pdf", "ok", resource=base + "/report.pdf")

    # Custom policies.
    case("custom_forced", base + "/report.pdf", "ok", force_custom=True)
    case("custom_forced_query", base + "/photo.jpg?variant=preview", "ok", force_custom=True)
    case("custom_dgt_past", base + "/report.pdf", "ok", dgt=now - 60)
    case("custom_dgt_future", base + "/report.pdf", "not_yet_valid", dgt=now + 60)
    case("custom_dgt_now", base + "/report.pdf", "not_yet_valid", dgt=now)
    case("custom_expired_1s", base + "/report.pdf", "expired", dlt=now - 1, dgt=now - 600)
    case("custom_ip4_net", base + "/report.pdf", "ok", ip="203.0.113.0/24")
    case("custom_ip4_bare", base + "/report.pdf", "ok", ip="203.0.113.9")
    case("custom_ip4_wrong", base + "/report.pdf", "ip_not_allowed", ip="198.51.100.0/24")
    case("custom_ip4_bare_wrong", base + "/report.pdf", "ip_not_allowed", ip="203.0.113.10")
    case("custom_ip4_mapped_client", base + "/report.pdf", "ok", ip="203.0.113.0/24",
         client_ip="::ffff:203.0.113.9")
    case("custom_ip4_v6_client", base + "/report.pdf", "ip_not_allowed", ip="203.0.113.0/24",
         client_ip="2001:db8::9")
    case("custom_ip6_net", base + "/report.pdf", "ok", ip="2001:db8:1234::/48", client_ip="2001:db8:1234:5::1")
    case("custom_ip6_wrong", base + "/report.pdf", "ip_not_allowed", ip="2001:db8:1234::/48",
         client_ip="2001:db8:1235::1")
    case("custom_ip6_host", base + "/report.pdf", "ok", ip="2001:db8::7/128", client_ip="2001:db8::7")
    case("custom_ip6_v4_client", base + "/report.pdf", "ip_not_allowed", ip="2001:db8::/32")
    case("custom_all_conditions", base + "/report.pdf", "ok", dgt=now - 60, ip="203.0.113.0/24", sha256=True)
    case("custom_wildcard_star", base + "/photo.jpg?w=100&h=100", "ok", resource=base + "/*")
    case("custom_wildcard_star_host", base + "/photo.jpg", "ok", resource="https://*.example.com/files/*")
    case("custom_wildcard_star_any", base + "/photo.jpg?x=1", "ok", resource="*")
    case("custom_wildcard_question", base + "/img-7.jpg", "ok", resource=base + "/img-?.jpg")
    case("custom_wildcard_question_no", base + "/img-10.jpg", "resource_mismatch", resource=base + "/img-?.jpg")
    case("custom_wildcard_question_empty", base + "/img-.jpg", "resource_mismatch", resource=base + "/img-?.jpg")
    case("custom_wildcard_other_dir", "https://cdn.example.com/files/018f3a2c/photo.jpg", "resource_mismatch",
         resource=base + "/*")
    case("custom_wildcard_prefix_only", base, "resource_mismatch", resource=base + "/*")
    case("custom_wildcard_case", base + "/Photo.JPG", "resource_mismatch", resource=base + "/photo.*")
    case("custom_other_resource", base + "/report.pdf", "resource_mismatch",
         resource="https://cdn.example.com/files/018f3a2c/report.pdf")
    case("custom_resource_without_query", base + "/photo.jpg?w=100", "resource_mismatch",
         resource=base + "/photo.jpg")
    case("custom_unicode_resource", base + "/report.pdf", "resource_mismatch",
         resource='https://cdn.example.com/files/caf\u00e9/\U0001F600/"q"\\\t\x7f\u2028*')
    case("custom_unicode_wildcard", base + "/report.pdf", "resource_mismatch",
         resource="https://cdn.example.com/*\u00e9*|*")
    case("custom_star_in_url", base + "/*", "ok")
    case("custom_sha256_wildcard", base + "/doc.pdf?disposition=attachment", "ok", resource=base + "/*",
         sha256=True)

    # ECDSA P-256 (random signatures: verification only; the C signer's are checked by `verify`).
    case("ec_canned_sha1", base + "/report.pdf", "ok", key="KECP256CURRENT")
    case("ec_canned_sha256", base + "/photo.jpg?variant=thumb", "ok", key="KECP256CURRENT", sha256=True)
    case("ec_custom_sha256", base + "/report.pdf", "ok", key="KECP256CURRENT", sha256=True, ip="203.0.113.0/24",
         dgt=now - 5)
    case("ec_custom_expired", base + "/report.pdf", "expired", key="KECP256CURRENT", force_custom=True,
         dlt=now - 1)
    case("ec_wrong_key", base + "/report.pdf", "bad_signature", key="KECP256CURRENT", sign_as="KECSTRANGER")

    # Keys.
    case("unknown_key_pair_id", base + "/report.pdf", "unknown_key", key="KRSAUNKNOWN")
    case("rsa_wrong_key", base + "/report.pdf", "bad_signature", sign_as="KSTRANGER")
    case("rsa_wrong_key_custom", base + "/report.pdf", "bad_signature", sign_as="KSTRANGER", ip="203.0.113.9")

    # Signed policies we must refuse (or, for the last ones, accept) for their content.
    far = now + 300
    ok_condition = '"Condition":{"DateLessThan":{"AWS:EpochTime":%d}}' % far
    resource = '"Resource":"%s/report.pdf"' % base
    raw_policy_case("policy_not_json", "not json at all", "malformed_policy")
    raw_policy_case("policy_empty_object", "{}", "malformed_policy")
    raw_policy_case("policy_no_statement", '{"Statement":[]}', "malformed_policy")
    raw_policy_case("policy_statement_object", '{"Statement":{%s,%s}}' % (resource, ok_condition),
                    "malformed_policy")
    raw_policy_case("policy_two_statements", '{"Statement":[{%s,%s},{%s,%s}]}' %
                    (resource, ok_condition, resource, ok_condition), "malformed_policy")
    raw_policy_case("policy_no_resource", '{"Statement":[{%s}]}' % ok_condition, "malformed_policy")
    raw_policy_case("policy_no_condition", '{"Statement":[{%s}]}' % resource, "malformed_policy")
    raw_policy_case("policy_no_date_less_than", '{"Statement":[{%s,"Condition":{"DateGreaterThan":'
                    '{"AWS:EpochTime":1}}}]}' % resource, "malformed_policy")
    raw_policy_case("policy_unknown_condition", '{"Statement":[{%s,"Condition":{"DateLessThan":{"AWS:EpochTime":'
                    '%d},"DateLessThanEquals":{"AWS:EpochTime":%d}}}]}' % (resource, far, far), "malformed_policy")
    raw_policy_case("policy_extra_top_level", '{"Version":"2012-10-17","Statement":[{%s,%s}]}' %
                    (resource, ok_condition), "malformed_policy")
    raw_policy_case("policy_epoch_string", '{"Statement":[{%s,"Condition":{"DateLessThan":{"AWS:EpochTime":'
                    '"%d"}}}]}' % (resource, far), "malformed_policy")
    raw_policy_case("policy_epoch_fraction", '{"Statement":[{%s,"Condition":{"DateLessThan":{"AWS:EpochTime":'
                    '%d.5}}}]}' % (resource, far), "malformed_policy")
    raw_policy_case("policy_epoch_negative", '{"Statement":[{%s,"Condition":{"DateLessThan":{"AWS:EpochTime":'
                    '-1}}}]}' % resource, "malformed_policy")
    raw_policy_case("policy_bad_cidr", '{"Statement":[{%s,"Condition":{"DateLessThan":{"AWS:EpochTime":%d},'
                    '"IpAddress":{"AWS:SourceIp":"300.1.2.3/8"}}}]}' % (resource, far), "malformed_policy")
    raw_policy_case("policy_cidr_prefix_too_long", '{"Statement":[{%s,"Condition":{"DateLessThan":'
                    '{"AWS:EpochTime":%d},"IpAddress":{"AWS:SourceIp":"10.0.0.0/33"}}}]}' % (resource, far),
                    "malformed_policy")
    raw_policy_case("policy_duplicate_resource", '{"Statement":[{"Resource":"https://evil.example/*",%s,%s}]}' %
                    (resource, ok_condition), "malformed_policy")
    raw_policy_case("policy_duplicate_condition", '{"Statement":[{%s,"Condition":{"DateLessThan":'
                    '{"AWS:EpochTime":%d},"DateLessThan":{"AWS:EpochTime":%d}}}]}' % (resource, now - 10, far),
                    "malformed_policy")
    raw_policy_case("policy_nul_in_resource", '{"Statement":[{"Resource":"%s/report.pdf\\u0000.evil",%s}]}' %
                    (base, ok_condition), "malformed_policy")
    raw_policy_case("policy_trailing_garbage", '{"Statement":[{%s,%s}]}xyz' % (resource, ok_condition),
                    "malformed_policy")
    raw_policy_case("policy_pretty_printed", '{\n  "Statement": [ {\n    %s,\n    %s\n  } ]\n}\n' %
                    (resource, ok_condition), "ok")
    raw_policy_case("policy_too_long", '{"Statement":[{"Resource":"%s/report.pdf*%s",%s}]}' %
                    (base, "x" * 4100, ok_condition), "too_long")


def verify(directory):
    signer = CloudFrontSigner("unused", lambda message: b"")
    for line in sys.stdin:
        key_id, url = line.rstrip("\n").split(" ", 1)
        try:
            base, _, query = url.partition("?")
            kept, params = [], {}
            for token in query.split("&") if "?" in url else []:
                name, eq, value = token.partition("=")
                if eq and name in CF_PARAMS:
                    params[name] = value
                else:
                    kept.append(token)
            resource = base + ("?" + "&".join(kept) if kept else "")
            if params.get("Key-Pair-Id") != key_id:
                raise ValueError("Key-Pair-Id %r" % params.get("Key-Pair-Id"))
            if "Policy" in params:
                policy = cf_b64_decode(params["Policy"])
            else:
                policy = signer.build_policy(resource, utc(int(params["Expires"]))).encode()
            digest = hashes.SHA256() if params.get("Hash-Algorithm") == "SHA256" else hashes.SHA1()
            signature = cf_b64_decode(params["Signature"])
            with open(os.path.join(directory, key_id + ".pub.pem"), "rb") as f:
                public = serialization.load_pem_public_key(f.read())
            if isinstance(public, rsa.RSAPublicKey):
                public.verify(signature, policy, padding.PKCS1v15(), digest)
            else:
                public.verify(signature, policy, ec.ECDSA(digest))
            emit({"ok": True, "error": ""})
        except (InvalidSignature, ValueError, KeyError) as e:
            emit({"ok": False, "error": "%s: %s" % (type(e).__name__, e)})


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "gen":
        gen(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) == 3 and sys.argv[1] == "verify":
        verify(sys.argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
