"""A "did you mean" looks at the keys of the groups actually chosen, and prefers a key of the same
group whose last name matches: a researcher's first sweep key (``optim.lr``) is nested
(``optim.optimizer.lr``), and a method's own keys exist only once that method is chosen.

Expected suggestions are the keys as written in the YAML files of ``conf/`` (read by hand),
not the function's output."""

from __future__ import annotations

import pytest

from noisybench.config import _did_you_mean, compose
from noisybench.errors import UserError


@pytest.mark.parametrize(
    ("overrides", "suggestion"),
    [
        (["optim.lr=0.1"], "optim.optimizer.lr"),  # conf/optim/sgd_cosine.yaml
        (["optim=adam_onecycle", "optim.lr=0.1"], "optim.optimizer.lr"),
        (["method=bsd", "method.gama=0.9"], "method.gamma"),  # conf/method/bsd.yaml
        (["experiment=quickstart", "method=bsdplus", "method.lambda=3"], "method.lambda_c"),
        (["optim.optimizer.momentun=0.8"], "optim.optimizer.momentum"),
        (["epoch=3"], "epochs"),
    ],
)
def test_suggestion_comes_from_the_chosen_groups(overrides: list[str], suggestion: str) -> None:
    with pytest.raises(UserError, match=rf"did you mean {suggestion}\?"):
        compose(overrides)


def test_added_key_suggestion_comes_from_the_chosen_method() -> None:
    # gamma exists in bsd.yaml, not in ce.yaml (the base config's method)
    with pytest.raises(UserError, match=r"\+method\.gama=.*did you mean method\.gamma\?"):
        compose(["method=bsd", "+method.gama=0.9"])


def test_no_suggestion_when_nothing_is_close() -> None:
    known = ["optim.optimizer.lr", "optim.name", "method.gamma"]
    assert _did_you_mean("method.zzzzzz", known) == ""
    # the same last name in another group is not offered
    assert _did_you_mean("optim.gamma", known) != "did you mean method.gamma? "
