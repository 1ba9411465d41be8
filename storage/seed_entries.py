"""The entries of an org chart seed file, each checked on its own (references come later)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic_core import PydanticCustomError

from storage.credit_code import problem as credit_code_problem

_INT64 = 2**63


def _storable(text: str) -> str:
    # PostgreSQL refuses NUL in text and neither driver can encode a lone surrogate
    if "\x00" in text:
        raise PydanticCustomError("seed", "contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError("seed", "is not valid Unicode text") from None
    return text


def _text(max_length: int) -> Any:
    constraints = StringConstraints(strip_whitespace=True, min_length=1, max_length=max_length)
    return Annotated[str, constraints, AfterValidator(_storable)]


def _username(text: str) -> str:
    name = text.removeprefix("@")
    if not _USERNAME.fullmatch(name):
        raise PydanticCustomError(
            "seed", "{text} is not a Telegram username", {"text": repr(text)}
        )
    return name


_USERNAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{3,31}")
Code = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Username = Annotated[str, AfterValidator(_username)]
Name = _text(128)
LongName = _text(256)
Keyword = _text(32)
Industry = _text(64)


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RegionEntry(_Entry):
    code: Code
    name: Name
    level: Literal["city", "county"]
    parent: Code | None = None

    @model_validator(mode="after")
    def _county_has_parent(self) -> Self:
        if self.level == "county" and self.parent is None:
            raise PydanticCustomError("seed", "a county needs a parent region")
        return self


class DepartmentEntry(_Entry):
    code: Code
    name: Name
    region: Code
    keywords: list[Keyword] = Field(default_factory=list)


class EnterpriseEntry(_Entry):
    code: Code
    name: LongName
    region: Code
    credit_code: str
    industry: Industry | None = None

    @model_validator(mode="after")
    def _credit_code_checks(self) -> Self:
        problem = credit_code_problem(self.credit_code)
        if problem is not None:
            raise PydanticCustomError("seed", problem)
        return self


_SCOPES = {
    "enterprise": "enterprise",
    "official": "department",
    "leader": "region",
    "coordinator": "region",
    "admin": None,
}


class PersonEntry(_Entry):
    telegram_id: Annotated[int, Field(gt=0, lt=_INT64)]
    name: Name
    role: Literal["enterprise", "official", "leader", "coordinator", "admin"]
    enterprise: Code | None = None
    department: Code | None = None
    region: Code | None = None
    head: bool = False
    language: Literal["zh", "en"] | None = None
    username: Username | None = None

    @model_validator(mode="after")
    def _scope_fits_role(self) -> Self:
        needed = _SCOPES[self.role]
        if needed is not None and getattr(self, needed) is None:
            raise PydanticCustomError(
                "seed", "role {role} needs {what}", {"role": self.role, "what": needed}
            )
        for other in ("enterprise", "department"):
            if other != needed and getattr(self, other) is not None:
                raise PydanticCustomError(
                    "seed", "role {role} takes no {what}", {"role": self.role, "what": other}
                )
        if self.head and self.role != "official":
            raise PydanticCustomError("seed", "only an official can be a department head")
        return self


class GroupEntry(_Entry):
    chat_id: Annotated[int, Field(lt=0, gt=-_INT64)]
    region: Code
    title: Annotated[str, StringConstraints(max_length=256), AfterValidator(_storable)] = ""
    language: Literal["zh", "en"] | None = None
