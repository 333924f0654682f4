"""The built-in workloads: pure-function data, fixed splits, hashes, config validation,
deterministic models, evaluation, and each tiny recipe reaching its tiny target."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from wdlab import workloads
from wdlab.config import validate
from wdlab.workloads import charlm
from wdlab.workloads.charlm import CharLM
from wdlab.workloads.digits import Digits
from wdlab.workloads.grokking import Grokking
from wdlab.workloads.teacher import Teacher

NAMES = workloads.available()


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: these models are tiny, and extra threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(name: str, seed: int = 0, model: dict | None = None, data: dict | None = None):
    """The workload `name` from its tiny recipe, with overrides."""
    cls = workloads.get(name)
    recipe = cls.recipe(tiny=True)
    return cls(
        cls.ModelConfig(**{**recipe["model"], **(model or {})}),
        cls.DataConfig(**{**recipe["data"], **(data or {})}),
        seed,
    )


def same(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_registry_names_match_classes() -> None:
    assert NAMES == ["charlm", "digits", "grokking", "teacher"]
    for name in NAMES:
        assert workloads.get(name).name == name


# --- data: pure functions of (seed, step) ------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_batch_is_a_pure_function_of_seed_and_step(name) -> None:
    a, b, other = make(name, seed=0), make(name, seed=0), make(name, seed=1)
    assert same(a.batch(5), a.batch(5)) and same(a.batch(5), b.batch(5))
    if name == "grokking":  # full batch: the whole training set at every step, for every seed
        assert same(a.batch(0), a.batch(7)) and same(a.batch(0), other.batch(0))
    else:
        assert not same(a.batch(0), a.batch(1))
        assert not same(a.batch(5), other.batch(5))


@pytest.mark.parametrize("cls", [Digits, Teacher])
def test_minibatches_walk_a_permutation_per_epoch(cls) -> None:
    work = make(cls.name)
    size, spe = work.data_config.batch_size, work.steps_per_epoch
    assert spe == work.data_config.n_train // size
    for epoch in (0, 1):
        rows = torch.cat([work.batch(epoch * spe + i)[0] for i in range(spe)])
        assert rows.shape[0] == spe * size
        assert torch.unique(rows, dim=0).shape[0] == spe * size  # no example twice in an epoch
    first = torch.cat([work.batch(i)[0] for i in range(spe)])
    second = torch.cat([work.batch(spe + i)[0] for i in range(spe)])
    assert not torch.equal(first, second)  # a new order each epoch
    x, y = work.batch(0)
    assert x.shape == (size, work.train_x.shape[1]) and y.shape[0] == size


def test_epoch_indices_are_the_seeded_permutation_sliced_by_step() -> None:
    """The order is drawn once per epoch (cached) but must stay the formula: numpy's
    generator seeded by (seed, epoch, stream), its permutation sliced by the step."""
    import numpy as np

    from wdlab.workloads.base import epoch_indices

    n, size, seed, stream = 100, 8, 3, 7
    for step in (0, 1, 11, 12, 13, 40, 11):  # 12 steps an epoch; back to an earlier epoch
        epoch, position = divmod(step, n // size)
        order = np.random.default_rng([seed, epoch, stream]).permutation(n)
        want = order[position * size : (position + 1) * size]
        got = epoch_indices(n, size, seed, step, stream)
        assert got.tolist() == want.tolist()
        got.zero_()  # a caller's tensor is its own: the cached order stays intact
    assert epoch_indices(n, size, seed, 11, stream).tolist() == want.tolist()


def test_grokking_labels_and_split() -> None:
    for operation in ("add", "sub", "mul", "div"):
        work = make("grokking", data={"p": 13, "operation": operation, "train_fraction": 0.5})
        x, y = work.batch(0)
        a, b = x[:, 0], x[:, 1]
        expected = {
            "add": lambda a, b: (a + b) % 13,
            "sub": lambda a, b: (a - b) % 13,
            "mul": lambda a, b: (a * b) % 13,
            "div": lambda a, b: torch.tensor(  # 1/b = b^(p-2) mod p
                [int(a_) * pow(int(b_), 11, 13) % 13 for a_, b_ in zip(a, b, strict=True)]
            ),
        }[operation](a, b)
        assert torch.equal(y, expected), operation
        n_pairs = 13 * 12 if operation == "div" else 13 * 13
        both = torch.cat([work.train_index, work.val_index])
        assert torch.equal(both.sort().values, torch.arange(n_pairs))  # disjoint, complete
        assert len(work.train_index) == round(0.5 * n_pairs)
    # the split depends on data.split_seed, not the run seed
    assert torch.equal(make("grokking", seed=3).train_index, make("grokking").train_index)
    assert not torch.equal(make("grokking", data={"split_seed": 1}).train_index,
                           make("grokking").train_index)


def test_grokking_transformer_input_ends_with_equals_token() -> None:
    work = make("grokking", model={"arch": "transformer"})
    x, _ = work.batch(0)
    assert x.shape[1] == 3 and bool((x[:, 2] == work.data_config.p).all())


def test_charlm_windows_are_shifted_text_from_the_train_split() -> None:
    work = make("charlm")
    x, y = work.batch(3)
    context = work.model_config.context
    assert x.shape == y.shape == (work.data_config.batch_size, context)
    assert torch.equal(x[:, 1:], y[:, :-1])
    n_val = len(work.val_ids)
    train_text = work.text[:-n_val]
    assert "".join(work.vocab[i] for i in work.val_ids[:200]) == work.text[-n_val:][:200]
    for row in range(3):
        window = "".join(work.vocab[i] for i in x[row]) + work.vocab[y[row, -1]]
        assert window in train_text
    assert n_val == round(len(work.text) * work.data_config.val_fraction)


def test_charlm_corpus_is_the_sorted_pydoc_topics() -> None:
    from pydoc_data.topics import topics

    text = charlm.corpus_text()
    assert text.startswith(topics[min(topics)]) and text.endswith(topics[max(topics)])
    assert len(text) == sum(map(len, topics.values())) + 2 * (len(topics) - 1)


@pytest.mark.parametrize("name", NAMES)
def test_data_hash_is_stable(name) -> None:
    digest = make(name).data_hash()
    assert digest == make(name, seed=1).data_hash()  # the run seed does not change the data
    assert len(digest) == 64 and int(digest, 16) >= 0


@pytest.mark.parametrize(
    "name, change",
    [
        ("grokking", {"p": 29}),
        ("grokking", {"split_seed": 1}),
        ("digits", {"label_noise": 0.3}),
        ("digits", {"split_seed": 1}),
        ("teacher", {"data_seed": 1}),
        ("teacher", {"noise": 0.2}),
        ("charlm", {"val_fraction": 0.2}),
    ],
)
def test_data_hash_changes_with_the_data(name, change) -> None:
    assert make(name).data_hash() != make(name, data=change).data_hash()


def test_charlm_hash_follows_the_corpus(monkeypatch) -> None:
    before = make("charlm").data_hash()
    original = charlm.corpus_text
    monkeypatch.setattr(charlm, "corpus_text", lambda: original() + "!")
    assert make("charlm").data_hash() != before


def test_teacher_noise_sets_the_floor() -> None:
    work = make("teacher", data={"n_train": 4096, "n_val": 4096})
    y = torch.cat([work.train_y, work.val_y]).squeeze(1)
    # unit-variance clean signal plus N(0, 0.1^2) noise: total variance ~ 1.01
    assert y.var().item() == pytest.approx(1.0 + 0.1**2, rel=0.05)


# --- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "section, values, field",
    [
        (Grokking.DataConfig, {"p": -1}, "p"),
        (Grokking.DataConfig, {"operation": "pow"}, "operation"),
        (Grokking.DataConfig, {"train_fraction": 1.0}, "train_fraction"),
        (Grokking.ModelConfig, {"arch": "cnn"}, "arch"),
        (Grokking.ModelConfig, {"placement": "middle"}, "placement"),
        (CharLM.ModelConfig, {"norm": "groupnorm"}, "norm"),
        (CharLM.DataConfig, {"batch_size": 0}, "batch_size"),
        (Digits.ModelConfig, {"norm": "layernorm"}, "norm"),
        (Digits.DataConfig, {"label_noise": 1.5}, "label_noise"),
        (Teacher.DataConfig, {"dim": 0}, "dim"),
        (Teacher.ModelConfig, {"widht": 8}, "widht"),  # unknown keys are errors
    ],
)
def test_invalid_field_is_named(section, values, field) -> None:
    with pytest.raises(ValidationError) as info:
        section(**values)
    assert info.value.errors()[0]["loc"] == (field,)


@pytest.mark.parametrize(
    "section, values, words",
    [
        (Grokking.DataConfig, {"p": 96, "operation": "div"}, ["p=96", "prime"]),
        (CharLM.ModelConfig, {"d_model": 30, "n_head": 4}, ["d_model=30", "n_head=4"]),
        (Digits.DataConfig, {"n_train": 1500, "n_val": 500}, ["n_train", "n_val"]),
        (Teacher.DataConfig, {"n_train": 16, "batch_size": 32}, ["batch_size=32", "n_train"]),
    ],
)
def test_cross_field_errors_name_the_fields(section, values, words) -> None:
    with pytest.raises(ValidationError) as info:
        section(**values)
    message = info.value.errors()[0]["msg"]
    assert all(word in message for word in words), message


@pytest.mark.parametrize("tiny", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_recipe_is_a_valid_run_config(name, tiny) -> None:
    cls = workloads.get(name)
    recipe = cls.recipe(tiny=tiny)
    assert {"steps", "target", "optimizer", "schedule", "train", "model", "data"} <= set(recipe)
    assert recipe["optimizer"]["name"] == "adamw"
    assert {"lr", "weight_decay", "betas"} <= set(recipe["optimizer"])
    assert recipe["schedule"]["kind"] in ("cosine", "linear", "constant")
    assert {"eval_every", "clip"} <= set(recipe["train"])
    cls.ModelConfig(**recipe["model"])
    cls.DataConfig(**recipe["data"])
    config = validate({"workload": name, **recipe})  # the engine's own validation
    assert config.steps == recipe["steps"] and config.target == recipe["target"]
    if tiny:
        assert recipe["steps"] <= 400


def test_gpt_options_pass_through() -> None:
    options = {"placement": "peri", "qk_norm": True, "norm": "rmsnorm"}
    config = make("charlm", model=options).build_model().config
    assert (config.placement, config.qk_norm, config.norm) == ("peri", True, "rmsnorm")
    grok = make("grokking", model={"arch": "transformer", "placement": "post", "n_layer": 1,
                                   "d_model": 32, "d_mlp": 64})
    gpt = grok.build_model().gpt
    assert (gpt.config.placement, gpt.config.n_layer, gpt.config.vocab_size) == ("post", 1, 32)
    assert grok.width == 32


# --- models and evaluation ---------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_build_model_depends_only_on_the_seed(name) -> None:
    rng_before = torch.get_rng_state()
    a, b, c = (make(name, seed=s).build_model() for s in (0, 0, 1))
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is left alone
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())


@pytest.mark.parametrize("name", NAMES)
def test_evaluate_reports_metric_and_val_loss(name) -> None:
    work = make(name)
    model = work.build_model().eval()
    first, second = work.evaluate(model), work.evaluate(model)
    assert work.metric in first and "val_loss" in first
    assert first == second  # a fixed validation set
    assert all(math.isfinite(v) for v in first.values())
    loss = work.loss(model.train(), work.batch(0))
    assert loss.ndim == 0 and loss.requires_grad


def test_untrained_scores_are_chance_level() -> None:
    grok = make("grokking")
    model = grok.build_model().eval()
    assert grok.evaluate(model)["val_accuracy"] < 0.2  # chance 1/31
    lm = make("charlm")
    assert lm.evaluate(lm.build_model().eval())["val_loss"] == pytest.approx(
        math.log(lm.vocab_size), abs=0.5
    )


# --- tiny recipes reach their tiny targets -----------------------------------------------


def lr_at(step: int, total: int, kind: str, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(total - warmup, 1)
    return 1.0 - progress if kind == "linear" else 0.5 * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize("name", NAMES)
def test_tiny_recipe_reaches_its_target_with_a_plain_loop(name) -> None:
    cls = workloads.get(name)
    recipe = cls.recipe(tiny=True)
    work = make(name)
    torch.manual_seed(0)
    model = work.build_model()
    opt, sched, clip = recipe["optimizer"], recipe["schedule"], recipe["train"]["clip"]
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in params if p.ndim >= 2], "weight_decay": opt["weight_decay"]},
         {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
        lr=opt["lr"], betas=tuple(opt["betas"]),
    )
    values = []
    for step in range(recipe["steps"]):
        for group in optimizer.param_groups:
            group["lr"] = opt["lr"] * lr_at(step, recipe["steps"], sched["kind"], sched["warmup"])
        model.train()
        loss = work.loss(model, work.batch(step))
        optimizer.zero_grad()
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        if (step + 1) % recipe["train"]["eval_every"] == 0:
            with torch.no_grad():
                values.append(work.evaluate(model.eval())[cls.metric])
            if work.reached(values[-1], recipe["target"]):
                break
    assert work.reached(values[-1], recipe["target"]), (name, values)
