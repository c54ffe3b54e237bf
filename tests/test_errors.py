"""cramming_simple/errors.py: a full disk, however the library reports it."""

from __future__ import annotations

import errno

from cramming_simple.errors import DiskFullError, is_disk_full


def test_a_full_disk_is_recognised_however_the_library_reports_it():
    os_error = OSError(errno.ENOSPC, "No space left on device")
    try:  # torch.save reports it as a RuntimeError raised while the OSError was being handled
        try:
            raise os_error
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")  # noqa: B904
    except RuntimeError as err:
        assert is_disk_full(err)
    assert is_disk_full(
        Exception("Error while serializing: I/O error: No space left on device (os error 28)")
    )  # safetensors
    assert not is_disk_full(RuntimeError("unexpected pos 704 vs 598")) and not is_disk_full(
        OSError(errno.EACCES, "denied")
    )


def test_the_disk_full_line_says_how_much_is_free():
    message = str(DiskFullError("/tmp/no/such/folder/yet/model.safetensors", 1 << 20))
    assert "? bytes" not in message and "free on that file system" in message
