"""The entry point knows click's exceptions whichever click raised them (click itself, or the
copy typer bundles as ``typer._click``: a separate class hierarchy)."""

from __future__ import annotations

import pytest

from pipeline.cli.main import click_kind

click = pytest.importorskip("click")  # typer may bundle its own click; plain click comes with huggingface_hub


def bundled() -> object:
    import importlib

    return importlib.import_module("typer._click.exceptions")


def test_clicks_own_exceptions() -> None:
    assert click_kind(click.UsageError("x")) == "ClickException"
    assert click_kind(click.exceptions.NoSuchOption("--x")) == "ClickException"
    assert click_kind(click.exceptions.Abort()) == "Abort"


def test_typers_bundled_click_exceptions() -> None:
    try:
        ex = bundled()
    except ImportError:
        pytest.skip("this typer uses click itself")
    assert click_kind(ex.NoSuchOption("--x")) == "ClickException"  # type: ignore[attr-defined]
    assert click_kind(ex.BadParameter("abc")) == "ClickException"  # type: ignore[attr-defined]
    assert not isinstance(ex.NoSuchOption("--x"), click.ClickException)  # type: ignore[attr-defined]


def test_other_exceptions_are_not_click() -> None:
    class UsageError(Exception):  # a name alone, from another module, is not click's
        pass

    assert click_kind(UsageError("x")) is None
    assert click_kind(ValueError("x")) is None
