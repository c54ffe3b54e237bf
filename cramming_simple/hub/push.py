"""Push an exported folder to the Hugging Face hub (`export --push-to-hub`), or fail in seconds with one line.

Before anything is exported, the hub is asked for one HTTP answer under a deadline (name lookup included), so an
unreachable hub (no network, a firewall, a wrong HF_ENDPOINT) costs seconds, not an export and then
huggingface_hub's retries.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import UserError

CONNECT_TIMEOUT_S = 5.0


class HubError(UserError):
    """The hub cannot be reached, or refuses the upload."""


def reachable(endpoint: str, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """None when the endpoint gives an HTTP answer (any status) within `timeout` seconds, else why not."""
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
            outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)  # an answer: the hub is there
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            outcome.append(str(reason) or type(err).__name__)

    worker = threading.Thread(target=connect, daemon=True)  # daemon: a name lookup that hangs is left behind
    worker.start()
    worker.join(timeout)
    return outcome[0] if outcome else f"no answer within {timeout:.0f} s"


def check_hub() -> str:
    """The hub's endpoint (HF_ENDPOINT or huggingface.co), or HubError in one line when it does not answer."""
    from huggingface_hub import constants

    why = reachable(constants.ENDPOINT)
    if why is not None:
        raise HubError(
            f"cannot reach the Hugging Face hub at {constants.ENDPOINT} ({why}); nothing was exported: export "
            "without --push-to-hub and upload the folder later (`hf upload REPO_ID FOLDER`)"
        )
    return constants.ENDPOINT


def push(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """Create the model repo (if needed) and upload the folder as one commit; the repo's URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HfHubHTTPError, LocalTokenNotFoundError  # also in huggingface_hub<0.24

    api = HfApi(endpoint=check_hub())
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message="cramming-simple export"
        )
    except LocalTokenNotFoundError:
        raise HubError("not logged in to the Hugging Face hub: run `hf auth login` or set HF_TOKEN") from None
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise HubError(f"the push to {repo_id} failed: {str(err).splitlines()[0]}") from None
    return str(url)
