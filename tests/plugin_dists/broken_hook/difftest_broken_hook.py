"""A difftest plugin whose hook implementation misspells its argument (``registr``).

pluggy refuses it when the plugin is registered; difftest must name this plugin and its
distribution in one line and exit 3.
"""

import difftest


@difftest.hookimpl
def difftest_register_backends(registr):
    raise AssertionError("never called: the hook is refused at registration")
