"""JWT bearer auth (HS256 with PARTNERFLOW_JWT_SECRET) and the role rules of DESIGN §3."""

from __future__ import annotations

import time
from typing import Annotated

import jwt
from fastapi import Depends, Request
from pydantic import ValidationError

from api.errors import ApiError
from domain.principal import Principal, Role

ALGORITHM = "HS256"


def mint_token(
    secret: str,
    *,
    sub: str,
    roles: list[str],
    partner_id: str | None = None,
    ttl_seconds: int = 86400,
) -> str:
    now = int(time.time())
    claims: dict[str, object] = {"sub": sub, "roles": roles, "iat": now, "exp": now + ttl_seconds}
    if partner_id is not None:
        claims["partner_id"] = partner_id
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def principal_from_token(token: str, secret: str) -> Principal:
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["sub", "exp"]}
        )
    except jwt.ExpiredSignatureError as exc:
        raise ApiError("PF.UNAUTHENTICATED", "the token has expired") from exc
    except jwt.PyJWTError as exc:
        raise ApiError("PF.UNAUTHENTICATED", "the token is not valid") from exc
    try:
        return Principal(
            sub=claims["sub"], roles=claims.get("roles", []), partner_id=claims.get("partner_id")
        )
    except (ValidationError, TypeError) as exc:
        raise ApiError("PF.UNAUTHENTICATED", "the token's claims are not valid") from exc


def current_user(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            "PF.UNAUTHENTICATED",
            "send Authorization: Bearer <JWT>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    principal = principal_from_token(token.strip(), request.app.state.settings.jwt_secret)
    request.state.principal = principal
    return principal


CurrentUser = Annotated[Principal, Depends(current_user)]


def require_roles(principal: Principal, *roles: Role) -> None:
    if not principal.has(*roles):
        raise ApiError("PF.FORBIDDEN", f"this needs one of the roles: {', '.join(sorted(roles))}")


def require_partner_user(principal: Principal) -> str:
    if not principal.is_partner_user or principal.partner_id is None:
        raise ApiError(
            "PF.FORBIDDEN", "only partner users (partner_admin, partner_member) may do this"
        )
    return principal.partner_id


def require_partner_admin(principal: Principal) -> str:
    if principal.partner_id is None or not principal.has(Role.partner_admin):
        raise ApiError("PF.FORBIDDEN", "only a partner's admins (partner_admin) may do this")
    return principal.partner_id


def require_staff(principal: Principal) -> None:
    if not principal.is_staff:
        raise ApiError("PF.FORBIDDEN", "only partner-program staff may do this")


def may_see_partner_item(principal: Principal, partner_id: str | None) -> bool:
    """Partner users see their own partner's items only; staff see all."""
    if principal.is_staff:
        return True
    return principal.partner_id is not None and principal.partner_id == partner_id
