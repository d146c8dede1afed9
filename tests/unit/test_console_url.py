"""Where `fleet up` and `fleet api` say the console is."""

from __future__ import annotations

from cli.commands.up import console_url
from config.settings import ApiSettings, Settings


def test_the_console_url_is_the_apis_under_console() -> None:
    assert console_url(Settings(api=ApiSettings(port=8123))) == "http://127.0.0.1:8123/console/"
    wildcard = Settings(api=ApiSettings(host="0.0.0.0", port=80))
    assert console_url(wildcard) == "http://127.0.0.1:80/console/"
    named = Settings(api=ApiSettings(host="fleet.example", port=8000))
    assert console_url(named) == "http://fleet.example:8000/console/"
