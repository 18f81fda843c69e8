"""Which of a forward's outputs holds the class scores, for models that return several values.

MONAI's ViT returns ``(logits, hidden_states)``; other models return a list, or a dict with the logits under a
key. ``model_output`` names the element (an index into a tuple or list, a key of a dict); without it the first
element of a tuple or list is taken, and the caller checks that it holds one score per class. The same choice
is made on the values of a real forward (loading a checkpoint) and on the traced graph's nodes (explaining), so
both read the same element.
"""

from __future__ import annotations

from typing import Any

from mri_lrp.errors import SettingsError, UnsupportedLayerError

#: How a user says which output holds the logits, in messages.
HOW = "model_output in the config or --model-output INDEX|KEY on the command line"


def check_selector(value: Any) -> str | None:
    """A ``model_output`` value as kept in the settings: None, or the index or key as text."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)) or (isinstance(value, str) and not value.strip()):
        raise SettingsError(f"model_output: expected an index (0, 1, ...) or a key (e.g. 'logits'), got {value!r}")
    return str(value).strip()


def kind_of(value: Any) -> str:
    """'tuple', 'list' or 'dict' (traced containers are subclasses of these), else the type's name."""
    return next((k.__name__ for k in (tuple, list, dict) if isinstance(value, k)), type(value).__name__)


def element(how: str) -> str:
    """The element named in a `choose` description, without how it was chosen ("element 0 of a tuple of 2
    values")."""
    return how.split(" (")[0]


def choose(out: Any, selector: str | int | None) -> tuple[Any, str]:
    """(the element holding the logits, how it was chosen: "" for a single output).

    A tuple or list takes an index (negative ones count from the end), a dict a key; without a selector the
    first element of a tuple or list is taken. A dict without a selector, a selector for a single output, and
    an index or key that is not there are refused, naming what the forward returns.
    """
    selector = check_selector(selector)
    if isinstance(out, (tuple, list)):
        kind = kind_of(out)
        what = f"a {kind} of {len(out)} values"
        if selector is None:
            if not out:
                raise UnsupportedLayerError("output", "output", f"forward returns an empty {kind}")
            return out[0], f"element 0 of {what} (picked unasked; set {HOW} to choose another)"
        try:
            index = int(selector)
        except ValueError:
            raise SettingsError(f"model_output '{selector}': forward returns {what}, so give an index "
                                f"0..{len(out) - 1}") from None
        if not -len(out) <= index < len(out):
            raise SettingsError(f"model_output {index}: forward returns {what} (indices 0..{len(out) - 1})")
        return out[index], f"element {index} of {what} (model_output)"
    if isinstance(out, dict):
        keys = [str(k) for k in out]
        what = f"a dict (keys {', '.join(keys)})"
        if selector is None:
            raise UnsupportedLayerError("output", "output", f"forward returns {what}, not one tensor of class "
                                        f"scores; say which key holds the logits with {HOW}")
        key = next((k for k in out if str(k) == selector), None)
        if key is None:
            raise SettingsError(f"model_output '{selector}': no such key; forward returns {what}")
        return out[key], f"key '{selector}' of {what} (model_output)"
    if selector is not None:
        raise SettingsError(f"model_output '{selector}': forward returns one value, not a tuple, list or dict; "
                            f"leave model_output unset")
    return out, ""
