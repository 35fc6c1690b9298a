"""Entry point the Dify plugin daemon runs (`python -m main`): the SDK speaks its stdio protocol."""

from dify_plugin import DifyPluginEnv, Plugin

plugin = Plugin(DifyPluginEnv(MAX_REQUEST_TIMEOUT=600))

if __name__ == "__main__":
    plugin.run()
