"""The API's secret operations: secret_set, secret_list, secret_delete.

Thin: the secret service decides who may do what and seals the values; these
handlers only unpack the checked arguments. No answer ever carries a value.
"""

from __future__ import annotations

from typing import Any

from hpcbatch.controller.apiargs import NoArgs, Operation, SecretNameArgs, SecretSetArgs
from hpcbatch.controller.callers import ApiError, Caller
from hpcbatch.controller.secrets import SecretService


def _name(value: str | None, op: str) -> str:
    if not value:
        raise ApiError("bad_request", f"{op}: name is required")
    return value


class SecretHandlers:
    def __init__(self, secrets: SecretService) -> None:
        self._secrets = secrets

    def table(self) -> dict[str, Operation[Any]]:
        return {
            "secret_set": Operation(SecretSetArgs, self.set),
            "secret_list": Operation(NoArgs, self.list),
            "secret_delete": Operation(SecretNameArgs, self.delete),
        }

    async def set(self, args: SecretSetArgs, caller: Caller) -> Any:
        return await self._secrets.set(
            caller,
            _name(args.name, "secret_set"),
            value=args.value,
            file=args.file,
            command=args.command,
            access=list(args.access or ()),
        )

    async def list(self, args: NoArgs, caller: Caller) -> Any:
        return await self._secrets.list(caller)

    async def delete(self, args: SecretNameArgs, caller: Caller) -> Any:
        return await self._secrets.delete(caller, _name(args.name, "secret_delete"))
