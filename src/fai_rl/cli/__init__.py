"""The command-line entry points: fai-rl-train, fai-rl-eval, fai-rl-generate, fai-rl-export."""

from __future__ import annotations

import sys
from collections.abc import Callable

from fai_rl.noise import silence_known_noise

EXIT_USAGE = 2
silence_known_noise()  # two library messages no user needs (fai_rl.noise says which and why)


def report_errors(prog: str, run: Callable[[], int], interrupted: str = "") -> int:
    """run(), with any FaiRLError (recipe, data, arguments, environment) printed as `prog: message` without a
    traceback and exit code 2; Ctrl-C is exit 130 with `interrupted` said about what was left behind."""
    from fai_rl.errors import FaiRLError

    try:
        return run()
    except FaiRLError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted" + (f"; {interrupted}" if interrupted else ""), file=sys.stderr)
        return 130
