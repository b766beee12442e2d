#!/usr/bin/python3
"""Independent JWT vectors for tests/unit/common/test_jwt.c and test_jwt_memo.c (via jwt_test_keys.h), made with
PyJWT + cryptography.

Run by the C tests through popen with Debian's /usr/bin/python3 (the pyenv python3 on PATH cannot import
python3-jwt). A missing module raises ImportError, exits non-zero, and the C test fails: it never skips.

  jwt_vectors.py gen NOW OUR_ISS EXT_ISS AUDIENCE SECRET_HEX
      Generates an RSA-2048 and a P-256 key pair, prints one JSON object per line:
        {"type": "key", "name": "rs256"|"es256", "pem": <SubjectPublicKeyInfo PEM>}
        {"type": "case", "name": ..., "verifier": "rs256"|"es256", "token": ..., "expect": <reason>, "sub": ...}
      `expect` is fm_jwt_error_code() of the expected result ("ok" for success). Verifier "rs256" is configured
      with the RSA public key for EXT_ISS, "es256" with the EC one; both have our HS256 secret for OUR_ISS and
      AUDIENCE as the external audience.

  jwt_vectors.py decode TOKEN SECRET_HEX OUR_ISS
      Decodes a token we issued with jwt.decode(algorithms=["HS256"], issuer=OUR_ISS) and prints
      {"header": ..., "claims": ...}; exits non-zero if PyJWT refuses it.
"""

import base64
import hashlib
import hmac
import json
import sys

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_pem(private_key) -> str:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def emit(obj) -> None:
    print(json.dumps(obj, separators=(",", ":")))


def gen(now: int, our_iss: str, ext_iss: str, audience: str, secret: bytes) -> None:
    rs_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rs_other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    es_key = ec.generate_private_key(ec.SECP256R1())
    es_other = ec.generate_private_key(ec.SECP256R1())
    emit({"type": "key", "name": "rs256", "pem": public_pem(rs_key)})
    emit({"type": "key", "name": "es256", "pem": public_pem(es_key)})

    def ext_claims(**changes):
        claims = {"iss": ext_iss, "sub": "ext-user-1", "aud": audience, "iat": now, "nbf": now, "exp": now + 300}
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    def our_claims(**changes):
        claims = {"iss": our_iss, "sub": "42", "sid": "sess-1", "role": "member", "iat": now, "nbf": now,
                  "exp": now + 300, "jti": "pyjwt-jti-1"}
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    def case(name, verifier, token, expect, sub=None):
        emit({"type": "case", "name": name, "verifier": verifier, "token": token, "expect": expect, "sub": sub})

    # RS256 from the external provider.
    case("rs_ok", "rs256", jwt.encode(ext_claims(), rs_key, algorithm="RS256"), "ok", "ext-user-1")
    case("rs_ok_aud_list", "rs256",
         jwt.encode(ext_claims(aud=["another-app", audience]), rs_key, algorithm="RS256"), "ok", "ext-user-1")
    case("rs_exp_within_leeway", "rs256", jwt.encode(ext_claims(exp=now - 10), rs_key, algorithm="RS256"), "ok",
         "ext-user-1")
    case("rs_expired", "rs256", jwt.encode(ext_claims(exp=now - 31), rs_key, algorithm="RS256"), "expired")
    case("rs_nbf_within_leeway", "rs256", jwt.encode(ext_claims(nbf=now + 20), rs_key, algorithm="RS256"), "ok",
         "ext-user-1")
    case("rs_nbf_future", "rs256", jwt.encode(ext_claims(nbf=now + 120), rs_key, algorithm="RS256"),
         "not_yet_valid")
    case("rs_iat_future", "rs256", jwt.encode(ext_claims(iat=now + 120), rs_key, algorithm="RS256"),
         "not_yet_valid")
    case("rs_no_exp", "rs256", jwt.encode(ext_claims(exp=None), rs_key, algorithm="RS256"), "missing_claim")
    case("rs_no_sub", "rs256", jwt.encode(ext_claims(sub=None), rs_key, algorithm="RS256"), "missing_claim")
    case("rs_no_aud", "rs256", jwt.encode(ext_claims(aud=None), rs_key, algorithm="RS256"), "missing_claim")
    case("rs_bad_aud", "rs256", jwt.encode(ext_claims(aud="another-app"), rs_key, algorithm="RS256"),
         "bad_audience")
    case("rs_wrong_key", "rs256", jwt.encode(ext_claims(), rs_other, algorithm="RS256"), "bad_signature")
    case("rs_unknown_iss", "rs256", jwt.encode(ext_claims(iss="https://evil.example"), rs_key, algorithm="RS256"),
         "bad_issuer")
    # Our issuer is pinned to HS256: a provider-signed token claiming to be ours is refused on alg.
    case("rs_claims_our_iss", "rs256", jwt.encode(our_claims(), rs_key, algorithm="RS256"), "bad_alg")
    # Same key, another RSA scheme: the configuration says RS256, so PS256 is refused even though it would verify.
    case("ps256_same_key", "rs256", jwt.encode(ext_claims(), rs_key, algorithm="PS256"), "bad_alg")
    case("rs_on_es_verifier", "es256", jwt.encode(ext_claims(), rs_key, algorithm="RS256"), "bad_alg")

    # ES256 from the external provider (PyJWT writes raw R || S).
    case("es_ok", "es256", jwt.encode(ext_claims(), es_key, algorithm="ES256"), "ok", "ext-user-1")
    case("es_wrong_key", "es256", jwt.encode(ext_claims(), es_other, algorithm="ES256"), "bad_signature")
    case("es_expired", "es256", jwt.encode(ext_claims(exp=now - 100), es_key, algorithm="ES256"), "expired")
    case("es_on_rs_verifier", "rs256", jwt.encode(ext_claims(), es_key, algorithm="ES256"), "bad_alg")
    # A valid ECDSA signature in DER form instead of R || S: not a JWS signature, must not verify.
    header = b64url(json.dumps({"alg": "ES256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(ext_claims()).encode())
    der = es_key.sign(f"{header}.{payload}".encode(), ec.ECDSA(hashes.SHA256()))
    case("es_der_signature", "es256", f"{header}.{payload}.{b64url(der)}", "bad_signature")

    # HS256 tokens for our issuer, made by PyJWT with our secret.
    case("hs_ok", "rs256", jwt.encode(our_claims(), secret, algorithm="HS256"), "ok", "42")
    case("hs_ok_es_verifier", "es256", jwt.encode(our_claims(role="admin"), secret, algorithm="HS256"), "ok", "42")
    case("hs_wrong_secret", "rs256", jwt.encode(our_claims(), secret + b"x", algorithm="HS256"), "bad_signature")
    case("hs_unknown_role", "rs256", jwt.encode(our_claims(role="superuser"), secret, algorithm="HS256"),
         "bad_claim")
    case("hs_no_role", "rs256", jwt.encode(our_claims(role=None), secret, algorithm="HS256"), "missing_claim")
    case("hs_no_sid", "rs256", jwt.encode(our_claims(sid=None), secret, algorithm="HS256"), "missing_claim")
    case("hs_expired", "rs256", jwt.encode(our_claims(exp=now - 60), secret, algorithm="HS256"), "expired")
    case("hs384_our_secret", "rs256", jwt.encode(our_claims(), secret, algorithm="HS384"), "bad_alg")
    # Our secret on a token claiming the provider's issuer: that issuer is pinned to RS256/ES256.
    case("hs_claims_ext_iss", "rs256", jwt.encode(ext_claims(), secret, algorithm="HS256"), "bad_alg")
    case("alg_none", "rs256", jwt.encode(our_claims(), None, algorithm="none"), "bad_alg")
    # Algorithm confusion made independently of the C side: HMAC keyed with the provider's public PEM.
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(ext_claims()).encode())
    mac = hmac.new(public_pem(rs_key).encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    case("hs_keyed_with_rs_pem", "rs256", f"{header}.{payload}.{b64url(mac)}", "bad_alg")


def decode(token: str, secret: bytes, our_iss: str) -> None:
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, secret, algorithms=["HS256"], issuer=our_iss,
                        options={"require": ["iss", "sub", "iat", "nbf", "exp", "jti"]})
    emit({"header": header, "claims": claims})


def main() -> int:
    if len(sys.argv) == 7 and sys.argv[1] == "gen":
        gen(int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], bytes.fromhex(sys.argv[6]))
        return 0
    if len(sys.argv) == 5 and sys.argv[1] == "decode":
        decode(sys.argv[2], bytes.fromhex(sys.argv[3]), sys.argv[4])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
