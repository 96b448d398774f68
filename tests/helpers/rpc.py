"""A stand-in for the errors grpc raises, for tests of error mapping without a channel."""

from __future__ import annotations

import grpc


class FakeRpcError(grpc.RpcError):
    """Quacks like the grpc.Call errors grpc raises."""

    def __init__(
        self, code: grpc.StatusCode, details: str, trailing: dict[str, str] | None = None
    ) -> None:
        super().__init__(details)
        self._code = code
        self._details = details
        self._trailing = tuple((trailing or {}).items())

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._trailing
