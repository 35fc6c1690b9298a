"""The provider: checks the admin's bridge URL and API key when they are saved in the Dify console."""

from __future__ import annotations

from typing import Any

from dify_plugin import ToolProvider
from dify_plugin.errors.tool import ToolProviderCredentialValidationError

from tools.bridge_client import BridgeClient, BridgeConfig, BridgeError

VALIDATE_TIMEOUT_S = 10.0


class TalkingHeadProvider(ToolProvider):
    def _validate_credentials(self, credentials: dict[str, Any]) -> None:
        try:
            client = BridgeClient(BridgeConfig.from_credentials(credentials), "dify-admin", VALIDATE_TIMEOUT_S)
            client.whoami()
        except BridgeError as exc:
            raise ToolProviderCredentialValidationError(str(exc)) from None
