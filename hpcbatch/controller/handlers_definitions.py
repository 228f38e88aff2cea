"""The API's job definition operations: register, definitions, definition, deregister.

Thin: the definition service checks the bodies and references and words the
refusals; these handlers only unpack the checked arguments for it.
"""

from __future__ import annotations

from typing import Any

from hpcbatch.controller.apiargs import DefinitionRefArgs, DefinitionsArgs, Operation, RegisterArgs
from hpcbatch.controller.callers import Caller
from hpcbatch.controller.definitions import DefinitionService


class DefinitionHandlers:
    def __init__(self, definitions: DefinitionService) -> None:
        self._definitions = definitions

    def table(self) -> dict[str, Operation[Any]]:
        return {
            "register": Operation(RegisterArgs, self.register),
            "definitions": Operation(DefinitionsArgs, self.list),
            "definition": Operation(DefinitionRefArgs, self.get),
            "deregister": Operation(DefinitionRefArgs, self.deregister),
        }

    async def register(self, args: RegisterArgs, caller: Caller) -> Any:
        return await self._definitions.register(args.definition, caller)

    async def list(self, args: DefinitionsArgs, caller: Caller) -> Any:
        return await self._definitions.list(args.name or None, bool(args.all), caller)

    async def get(self, args: DefinitionRefArgs, caller: Caller) -> Any:
        return await self._definitions.show(args.ref, caller)

    async def deregister(self, args: DefinitionRefArgs, caller: Caller) -> Any:
        return await self._definitions.deregister(args.ref, caller)
