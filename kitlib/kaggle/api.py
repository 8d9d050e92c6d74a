"""The Kaggle API for ``python -m kitlib kaggle``: credentials, the authenticated API object, and every API
failure as one line that says how to fix it.

The ``kaggle`` package (2.0.2) authenticates when it is imported and, without credentials, prints a notice and
exits the process. So it is imported only in `authenticated_api`, after `find_credentials` has found a token
(its output captured; the key is never printed or written). Importing this module imports nothing of it.
"""

import contextlib
import dataclasses
import io
import json
import os
import sys

KAGGLE_URL = "https://www.kaggle.com"
CREDENTIALS_FIX = ("put your API token in ~/.kaggle/kaggle.json ({\"username\": ..., \"key\": ...}; Kaggle -> "
                   "Settings -> API -> Create New Token; chmod 600 it) or export KAGGLE_USERNAME and KAGGLE_KEY")


class KaggleCommandError(RuntimeError):
    """A problem the user can fix; the message is one line that says how."""


def kaggle_config_dir(environ=None, home=None, platform=sys.platform):
    """The folder the ``kaggle`` package reads ``kaggle.json`` from (its own rule, without importing it).

    ``KAGGLE_CONFIG_DIR``; else ``~/.kaggle``; on Linux, when ``~/.kaggle`` does not exist,
    ``$XDG_CONFIG_HOME/kaggle`` (default ``~/.config/kaggle``).
    """
    environ = os.environ if environ is None else environ
    if environ.get("KAGGLE_CONFIG_DIR"):
        return environ["KAGGLE_CONFIG_DIR"]
    home = os.path.expanduser("~") if home is None else home
    legacy = os.path.join(home, ".kaggle")
    if platform.startswith("linux") and not os.path.exists(legacy):
        return os.path.join(environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config"), "kaggle")
    return legacy


@dataclasses.dataclass(frozen=True)
class Credentials:
    """Where a Kaggle token was found, and the account name when known. Never holds the key."""
    source: str
    username: str = None


def find_credentials(environ=None, home=None):
    """The credentials the ``kaggle`` package would use, without importing it; None when there are none.

    Looks at ``KAGGLE_USERNAME`` + ``KAGGLE_KEY``, ``KAGGLE_API_TOKEN``, ``kaggle.json`` in
    `kaggle_config_dir` (it needs "username" and "key"), and ``~/.kaggle/access_token``.
    """
    environ = os.environ if environ is None else environ
    home = os.path.expanduser("~") if home is None else home
    if environ.get("KAGGLE_USERNAME") and environ.get("KAGGLE_KEY"):
        return Credentials("KAGGLE_USERNAME/KAGGLE_KEY", environ["KAGGLE_USERNAME"])
    if environ.get("KAGGLE_API_TOKEN"):
        return Credentials("KAGGLE_API_TOKEN", environ.get("KAGGLE_USERNAME"))
    path = os.path.join(kaggle_config_dir(environ, home), "kaggle.json")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        config = None
    if isinstance(config, dict) and config.get("username") and config.get("key"):
        return Credentials(path, str(config["username"]))
    for name in ("access_token", "access_token.txt"):
        token = os.path.join(home, ".kaggle", name)
        if os.path.isfile(token) and os.path.getsize(token) > 0:
            return Credentials(token, environ.get("KAGGLE_USERNAME"))
    return None


def redact(text, environ=None):
    """``text`` with the values of KAGGLE_KEY / KAGGLE_API_TOKEN replaced by ``***``."""
    environ = os.environ if environ is None else environ
    for name in ("KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        secret = environ.get(name)
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def authenticated_api():
    """The ``kaggle`` package's ``KaggleApi``, authenticated; `KaggleCommandError` when there are no credentials.

    ``import kaggle`` authenticates (and exits without credentials), so it happens here, after
    `find_credentials`, with the package's printed notices captured and passed on (redacted) to stderr.
    """
    if find_credentials() is None:
        raise KaggleCommandError(f"no Kaggle credentials found: {CREDENTIALS_FIX}")
    notices = io.StringIO()
    try:
        with contextlib.redirect_stdout(notices):
            import kaggle  # noqa: PLC0415 - authenticates on import: only once credentials exist
            from kaggle.api.kaggle_api_extended import KaggleApi  # noqa: PLC0415

            api = KaggleApi(enable_oauth=kaggle.enable_oauth)
            api.authenticate()  # a fresh object: reads the credentials as they are now
    except SystemExit:
        raise KaggleCommandError(f"Kaggle did not accept the credentials: {CREDENTIALS_FIX}") from None
    except Exception as err:  # noqa: BLE001 - e.g. an incomplete kaggle.json, a network error for a token
        raise KaggleCommandError(explain_api_error(err, "sign in to Kaggle")) from None
    if notices.getvalue().strip():
        print(redact(notices.getvalue().strip()), file=sys.stderr)
    return api


def http_status(err):
    """The HTTP status of an API error (requests' HTTPError carries the response), else None."""
    return getattr(getattr(err, "response", None), "status_code", None)


def explain_api_error(err, action, competition=None):
    """One line saying why ``action`` failed and how to fix it.

    Args:
        err: the exception the ``kaggle`` API raised.
        action: what was attempted, e.g. "download cassava-leaf-disease-classification".
        competition: the competition slug when the action reads one (a 403 then means unaccepted rules).
    """
    status = http_status(err)
    detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
    if status == 403 and competition:
        return (f"Kaggle refused to {action} (403 Forbidden): accept the rules at "
                f"{KAGGLE_URL}/competitions/{competition}/rules with the account of your API token, then rerun")
    if status == 401:
        return (f"Kaggle rejected the credentials (401 Unauthorized) trying to {action}: create a new token at "
                f"{KAGGLE_URL}/settings (API -> Create New Token) and put it in ~/.kaggle/kaggle.json or "
                "KAGGLE_USERNAME/KAGGLE_KEY")
    if status == 403:
        return f"Kaggle refused to {action} (403 Forbidden: {detail}): check that your account owns or can see it"
    if status == 404:
        return f"Kaggle found nothing to {action} (404 Not Found): check the name (owner/slug as in its URL)"
    if status is not None:
        return f"Kaggle answered {status} trying to {action} ({detail}); retry later"
    if type(err).__name__ in ("ConnectionError", "Timeout", "ConnectTimeout", "ReadTimeout", "SSLError"):
        return f"could not reach Kaggle to {action} ({type(err).__name__}): check the internet connection and retry"
    if isinstance(err, ValueError):  # the package's own checks (and its 401/403 on a kernel, as ValueError)
        first = detail.split(". ")[0].rstrip(".")
        if "denied" in first.lower() and "kernel" in first.lower():
            return (f"Kaggle refused to {action} ({first}): use the id OWNER/SLUG of the kernel's URL "
                    f"({KAGGLE_URL}/code/OWNER/SLUG) and the credentials of the account that owns it")
        return f"the kaggle package refused to {action}: {first}"
    return f"could not {action}: {type(err).__name__}: {detail}"


def call_api(action, func, *args, competition=None, **kwargs):
    """``func(*args, **kwargs)``, with any API failure turned into a `KaggleCommandError` line."""
    try:
        return func(*args, **kwargs)
    except KaggleCommandError:
        raise
    except Exception as err:  # noqa: BLE001 - every API failure becomes one line
        raise KaggleCommandError(explain_api_error(err, action, competition)) from None


def response_error(response):
    """The error text of an API response object, or None."""
    if response is None:
        return "no answer (an upload failed: see the lines above)"
    error = getattr(response, "error", None)
    status = str(getattr(response, "status", "") or "").lower()
    if error:
        return str(error)
    if status and status not in ("ok", "ready"):
        return f"status {status}"
    return None
