"""JWT bearer auth (HS256 with PARTNERFLOW_JWT_SECRET) and the role rules of DESIGN §3."""

from __future__ import annotations

import re
import time
from typing import Annotated

import jwt
from fastapi import Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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


# The partner ids `PUT /v1/admin/partners/{partner_id}` takes.
PARTNER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
_EDGE_SPACE_OR_CONTROL = re.compile(r"^\s|\s$|[\x00-\x1f\x7f]")


class TokenClaims(BaseModel):
    """The claims of a verified token we act on (DESIGN §3), each refused (401
    PF.UNAUTHENTICATED) when degenerate, so no caller is an empty or blank somebody:

    - `sub` (required): 1..128 characters, no space at either end, no control character;
    - `roles` (required): a JSON list of distinct known role names (`domain.principal.Role`);
      a string, a number or an unknown role is refused; `[]` is a caller without powers (403
      wherever a role is needed);
    - `partner_id`: absent or null for staff; else a partner id as the admin routes take it
      (`PARTNER_ID_PATTERN`): `""`, spaces or `42` are refused, never read as "no partner".

    `exp` (required), `iat` and `nbf` are PyJWT's: integers, checked with the leeway. Other
    claims are not read."""

    model_config = ConfigDict(extra="ignore")

    sub: str = Field(min_length=1, max_length=128)
    roles: list[Role] = Field(max_length=len(Role))
    partner_id: str | None = Field(default=None, pattern=PARTNER_ID_PATTERN)

    @field_validator("sub")
    @classmethod
    def _sub_is_a_name(cls, sub: str) -> str:
        if _EDGE_SPACE_OR_CONTROL.search(sub):
            raise ValueError("sub has a space at an end or a control character")
        return sub

    @field_validator("roles")
    @classmethod
    def _roles_distinct(cls, roles: list[Role]) -> list[Role]:
        if len(set(roles)) != len(roles):
            raise ValueError("roles are listed more than once")
        return roles


def principal_from_token(token: str, secret: str, *, leeway_seconds: float = 30.0) -> Principal:
    """The caller named by a verified HS256 token. `exp`, `sub` and `roles` are required; `iat`,
    `nbf` and `exp` are checked with `leeway_seconds` of clock skew (setting `jwt_leeway`,
    PT30S); the claims read are `TokenClaims`. Raises 401 `PF.UNAUTHENTICATED`."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={"require": ["sub", "exp", "roles"]},
            leeway=leeway_seconds,
        )
    except jwt.ExpiredSignatureError as exc:
        raise ApiError("PF.UNAUTHENTICATED", "the token has expired") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise ApiError("PF.UNAUTHENTICATED", f"the token has no {exc.claim} claim") from exc
    except jwt.PyJWTError as exc:
        raise ApiError("PF.UNAUTHENTICATED", "the token is not valid") from exc
    try:
        read = TokenClaims.model_validate(claims)
    except ValidationError as exc:
        raise ApiError(
            "PF.UNAUTHENTICATED",
            "the token's claims are not valid",
            [
                {"loc": ["token", *(str(p) for p in e["loc"])], "msg": e["msg"], "type": e["type"]}
                for e in exc.errors(include_input=False, include_url=False)
            ],
        ) from exc
    return Principal(sub=read.sub, roles=read.roles, partner_id=read.partner_id)


def current_user(request: Request) -> Principal:
    """The caller of `request`, from its bearer token (`principal_from_token`), verified once per
    request: the rate limiter, the idempotency frame and the route share it through
    `request.state.principal`. Raises 401 PF.UNAUTHENTICATED."""
    cached = getattr(request.state, "principal", None)
    if isinstance(cached, Principal):
        return cached
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            "PF.UNAUTHENTICATED",
            "send Authorization: Bearer <JWT>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    settings = request.app.state.settings
    principal = principal_from_token(
        token.strip(), settings.jwt_secret, leeway_seconds=settings.jwt_leeway_seconds
    )
    request.state.principal = principal
    return principal


CurrentUser = Annotated[Principal, Depends(current_user)]


def require_roles(principal: Principal, *roles: Role) -> None:
    """403 unless one of `roles` counts for the caller (R-X-8: see `api.access.require_role`)."""
    from api.access import require_role

    require_role(principal, *roles)


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
    """R-X-8, kept for callers that know only the owning partner: a partner-scoped caller sees
    its own partner's items only; staff (no `partner_id`) those of any partner. Prefer
    `api.access.check_may_see`, which also knows which staff roles read which process."""
    if principal.partner_id is not None:
        return principal.partner_id == partner_id
    return principal.is_staff
