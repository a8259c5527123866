#!/usr/bin/env python3
"""A chatgate bot in one file: what the sample bot of `chatgate demo` does.

Given the chat token the widget sent with a message, it
  1. verifies the token against chatgate's published JWKS (PyJWT),
  2. looks the user's fresh IdP access token up through chatgate's bot API,
  3. calls the identity provider's userinfo endpoint with it,
and prints what it learned as JSON.

    pip install "pyjwt[crypto]" requests
    CHATGATE_BOT_SECRET=cgb_... python3 examples/bot.py \
        --chatgate http://127.0.0.1:8401 --audience http://localhost:8400/bot \
        --idp http://127.0.0.1:8402 CHAT_TOKEN

In a real bot, steps 1-3 run for every incoming message; the JWKS client
caches keys and refetches on an unknown `kid`.
"""
import argparse
import json
import os
import sys
from urllib.parse import quote

import jwt
import requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chatgate", required=True, help="chatgate's public_url (the chat tokens' issuer)")
    parser.add_argument("--audience", required=True, help="the app's chat_audience")
    parser.add_argument("--idp", required=True, help="the identity provider's issuer URL")
    parser.add_argument("chat_token")
    args = parser.parse_args()
    secret = os.environ.get("CHATGATE_BOT_SECRET")
    if not secret:
        print("set CHATGATE_BOT_SECRET to the bot secret from `chatgate bots create`", file=sys.stderr)
        return 2

    # 1. Who is this? Only a token signed by chatgate for our audience counts.
    jwks = jwt.PyJWKClient(f"{args.chatgate}/.well-known/jwks.json")
    key = jwks.get_signing_key_from_jwt(args.chat_token)
    claims = jwt.decode(
        args.chat_token,
        key.key,
        algorithms=["EdDSA", "ES256"],
        audience=args.audience,
        issuer=args.chatgate,
    )
    user_id = claims["sub"]

    # 2. The user's access token, fresh (chatgate refreshes it if needed).
    answer = requests.get(
        f"{args.chatgate}/v1/users/{quote(user_id, safe='')}/token",
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
    )
    if answer.status_code == 401 and answer.json().get("error") == "reauth_required":
        print(json.dumps({"user_id": user_id, "reply": "please sign in again"}))
        return 0
    answer.raise_for_status()
    token = answer.json()

    # 3. Use it: ask the identity provider who the user is.
    metadata = requests.get(f"{args.idp}/.well-known/openid-configuration", timeout=10).json()
    profile = requests.get(
        metadata["userinfo_endpoint"],
        headers={"Authorization": f"Bearer {token['access_token']}"},
        timeout=10,
    )
    profile.raise_for_status()
    info = profile.json()
    print(json.dumps({
        "user_id": user_id,
        "name": info.get("name"),
        "email": info.get("email"),
        "token_expires_at": token.get("expires_at"),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
