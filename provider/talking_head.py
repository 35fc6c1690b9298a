"""The provider: checks the admin's settings when they are saved in the Dify console: the file cap first (no
network needed), then the bridge URL and API key with one authenticated request."""

from __future__ import annotations

from typing import Any

from dify_plugin import ToolProvider
from dify_plugin.errors.tool import ToolProviderCredentialValidationError

from tools.bridge_client import BridgeClient, BridgeConfig, BridgeError
from tools.call_limits import file_cap_bytes

VALIDATE_TIMEOUT_S = 10.0


class TalkingHeadProvider(ToolProvider):
    def _validate_credentials(self, credentials: dict[str, Any]) -> None:
        try:
            file_cap_bytes(credentials)
            client = BridgeClient(BridgeConfig.from_credentials(credentials), "dify-admin", VALIDATE_TIMEOUT_S)
            client.whoami()
        except (BridgeError, ValueError) as exc:
            raise ToolProviderCredentialValidationError(str(exc)) from None
