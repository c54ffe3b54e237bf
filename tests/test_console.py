"""cramming_simple/console.py: warnings print as the library's own."""

from __future__ import annotations

import warnings


def test_python_warnings_print_as_the_librarys_own(capsys):
    from cramming_simple.console import route_warnings

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        route_warnings()
        warnings.warn("model: torch.compile failed at the first step; running eager", UserWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert err.startswith("warning: model: torch.compile failed at the first step; running eager (UserWarning, ")
    assert err.count("\n") == 1  # one line, no source excerpt
