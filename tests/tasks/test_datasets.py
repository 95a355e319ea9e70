"""Dataset files (JSONL, Parquet, CSV, JSON, save_to_disk) with a column mapping; chat rows through the
chat template; dataset columns reaching reward functions; the data fingerprint of a run."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from rlfold.core.config_loader import load_config
from rlfold.core.errors import ConfigError, DataError, RewardError
from rlfold.core.registry import needs
from rlfold.core.types import Prompt
from rlfold.models.loading import ASSETS
from rlfold.rewards import REWARDS, score_rewards
from rlfold.tasks import TASKS
from rlfold.tasks.chat import for_tokenizer
from rlfold.tasks.files import load_prompts, sha256_of
from rlfold.tasks.rows import Columns
from rlfold.trainers import online
from rlfold.trainers.loop import DATA_FILE, build_run

datasets = pytest.importorskip("datasets")

RECIPE = Path(__file__).resolve().parents[2] / "src/rlfold/recipes/grpo.yaml"
GSM8K = Path(__file__).resolve().parents[3] / "shared" / "data" / "gsm8k_test.jsonl"
# A chat template whose output uses only characters of tiny-arith's character vocabulary.
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}"
                 "{% if m['role'] == 'system' %}S: {% elif m['role'] == 'user' %}U: {% else %}A: {% endif %}"
                 "{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}A: {% endif %}")
ROWS = [{"question": "1+1=", "solution": "2", "level": 1}, {"question": "2+3=", "solution": "5", "level": 2}]
FAST = ["train.steps=2", "train.prompts_per_step=2", "rollout.n=2", "eval.size=2", "log.progress=false",
        "checkpoint.every=2", "threads=1"]


def make_chat_model(out: Path) -> Path:
    """tiny-arith with a chat template (same weights): the tiny chat-templated model of the tests."""
    shutil.copytree(ASSETS / "tiny-arith", out)
    cfg_file = out / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg_file.write_text(json.dumps(cfg, indent=2))
    return out


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> Path:
    return make_chat_model(tmp_path_factory.mktemp("models") / "tiny-chat")


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _files(tmp_path: Path, rows: list[dict]) -> dict[str, Path]:
    """The same rows as JSONL, Parquet, CSV, JSON and a save_to_disk directory."""
    ds = datasets.Dataset.from_list(rows)
    out = {"jsonl": _jsonl(tmp_path / "d.jsonl", rows), "parquet": tmp_path / "d.parquet", "csv": tmp_path / "d.csv",
           "json": tmp_path / "d.json", "save_to_disk": tmp_path / "d_disk"}
    ds.to_parquet(str(out["parquet"]))
    ds.to_csv(str(out["csv"]), index=False)
    out["json"].write_text(json.dumps(rows))
    ds.save_to_disk(str(out["save_to_disk"]))
    return out


# ----- formats and the column mapping -----------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv", "json", "save_to_disk"])
def test_every_format_gives_the_same_prompts(tmp_path, fmt):
    path = _files(tmp_path, ROWS)[fmt]
    prompts, src = load_prompts(path, "train", Columns(prompt="question", answer="solution"))
    assert [(p.text, p.answer, p.meta) for p in prompts] == [("1+1=", "2", {"level": 1}), ("2+3=", "5", {"level": 2})]
    assert (src.split, src.format, src.rows, src.path) == ("train", fmt, 2, str(path.resolve()))
    assert src.sha256 == sha256_of(path)
    if path.is_file():
        assert src.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_directory_fingerprint_changes_with_any_file(tmp_path):
    d = _files(tmp_path, ROWS)["save_to_disk"]
    before = sha256_of(d)
    (d / "extra.txt").write_text("x")
    assert sha256_of(d) != before


def test_the_arith_task_reads_parquet_with_a_mapping(tmp_path):
    files = _files(tmp_path, ROWS)
    t = TASKS.get("arith")(train_file=str(files["parquet"]), held_out_file=str(files["csv"]),
                           columns=Columns(prompt="question", answer="solution"))
    assert [p.text for p in t.train] == ["1+1=", "2+3="] and [p.answer for p in t.held_out] == ["2", "5"]
    assert [(s.split, s.format) for s in t.sources] == [("train", "parquet"), ("held_out", "csv")]


def test_chat_rows_from_parquet_keep_their_messages(tmp_path):
    rows = [{"messages": [{"role": "system", "content": "add"}, {"role": "user", "content": "1+1="}], "answer": "2"}]
    prompts, _ = load_prompts(_files(tmp_path, rows)["parquet"])
    assert prompts[0].text == "1+1=" and prompts[0].meta == {"messages": rows[0]["messages"]}


@pytest.mark.parametrize("rows, message", [
    ([{"prompt": "1+1=", "answer": "2"}, {"question": "2+2=", "answer": "4"}],
     ":2: row is missing field(s) 'prompt' (has 'question', 'answer'); set task.prompt_key"),
    ([{"messages": "1+1=", "answer": "2"}], ":1: field 'messages' must be a non-empty list"),
    ([{"messages": [], "answer": "2"}], ":1: field 'messages' must be a non-empty list"),
    ([{"messages": [{"role": "user"}], "answer": "2"}], ":1: message 1 of field 'messages' must be an object with"),
    ([{"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}], "answer": "2"}],
     ":1: message 2 of field 'messages' has unknown role \"tool\""),
    ([{"messages": [{"role": "user", "content": 3}], "answer": "2"}], "must have string content, got 3"),
    ([{"messages": [{"role": "user", "content": "a", "name": "x"}], "answer": "2"}], "has key(s) 'name'"),
])
def test_bad_rows_name_file_and_row(tmp_path, rows, message):
    path = _jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError) as info:
        load_prompts(path)
    assert str(info.value).startswith(f"{path}:") and message in str(info.value)


def test_bad_parquet_row_is_named_by_row_number(tmp_path):
    path = _files(tmp_path, [{"prompt": "1+1=", "answer": "2"}, {"prompt": None, "answer": "4"}])["parquet"]
    with pytest.raises(DataError, match=r"d.parquet: row 2: field 'prompt' must be a string or number, got null"):
        load_prompts(path)


def test_a_missing_mapped_column(tmp_path):
    with pytest.raises(DataError, match=r"d.csv: row 1: row is missing field\(s\) 'gold' .*task.answer_key"):
        load_prompts(_files(tmp_path, ROWS)["csv"], cols=Columns(prompt="question", answer="gold"))


def test_unreadable_and_empty_files(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"bad.parquet: cannot read it as a Parquet file"):
        load_prompts(bad)
    empty = tmp_path / "empty.parquet"
    datasets.Dataset.from_dict({"prompt": [], "answer": []}).to_parquet(str(empty))
    with pytest.raises(DataError, match=r"empty.parquet is empty \(no rows\)"):
        load_prompts(empty)
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DataError, match=r"e.csv is empty"):
        load_prompts(tmp_path / "e.csv")
    (tmp_path / "plain_dir").mkdir()
    with pytest.raises(DataError, match=r"plain_dir is a directory but not a dataset saved with"):
        load_prompts(tmp_path / "plain_dir")


def test_a_dataset_dict_directory_is_refused(tmp_path):
    d = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(d))
    with pytest.raises(DataError, match=r"holds the splits 'train'"):
        load_prompts(d)


# ----- chat: the template, the system prompt ----------------------------------------------------------


def _tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def test_for_tokenizer_makes_every_prompt_chat_with_the_system_prompt(tmp_path, chat_model):
    chat_row = {"messages": [{"role": "user", "content": "2+2="}], "answer": "4"}
    path = _jsonl(tmp_path / "c.jsonl", [{"prompt": "1+1=", "answer": "2"}, chat_row])
    task = for_tokenizer(TASKS.get("arith")(train_file=str(path), held_out_size=2), _tokenizer(chat_model), "add")
    assert [p.meta["messages"] for p in task.train] == [
        [{"role": "system", "content": "add"}, {"role": "user", "content": "1+1="}],
        [{"role": "system", "content": "add"}, {"role": "user", "content": "2+2="}]]
    assert task.held_out[0].meta["messages"][1] == {"role": "user", "content": task.held_out[0].text}


def test_without_a_template_chat_rows_and_system_prompts_are_refused(tmp_path):
    tok = _tokenizer(ASSETS / "tiny-arith")
    path = _jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "1+1="}], "answer": "2"}])
    task = TASKS.get("arith")(train_file=str(path), held_out_size=2)
    with pytest.raises(DataError, match=r"c.jsonl: row 1: the row holds chat messages, but the tokenizer of model"):
        for_tokenizer(task, tok, model="tiny-arith")
    with pytest.raises(ConfigError, match=r"task.system_prompt is set"):
        for_tokenizer(TASKS.get("arith")(held_out_size=2), tok, "add")
    plain = TASKS.get("arith")(held_out_size=2)
    assert for_tokenizer(plain, tok) is plain  # plain prompts stay plain text


# ----- dataset columns reach reward functions ----------------------------------------------------------


@pytest.fixture
def level_reward():
    @REWARDS.register("test_level_reward")
    @needs("level")
    def level_reward(prompts, completions, finishes, level, *, scale: float = 1.0):
        """The row's ``level`` column times ``scale``."""
        return [scale * float(x) for x in level]

    yield "test_level_reward"
    REWARDS.unregister("test_level_reward")


def test_a_needed_column_reaches_the_reward(level_reward):
    prompts = [Prompt("1+1=", "2", {"level": 1}), Prompt("2+3=", "5", {"level": 3})]
    res = score_rewards([(level_reward, 1.0, {"scale": 2.0})], prompts, ["2", "5"], ["stop", "stop"])
    assert res.total.tolist() == [2.0, 6.0]


def test_a_needed_column_the_data_lacks_is_named(level_reward):
    with pytest.raises(RewardError, match=r"needs 'level', which is neither an input .* \(its extra columns: id\)"):
        score_rewards([(level_reward, 1.0)], [Prompt("1+1=", "2", {"id": 7})], ["2"], ["stop"])


def test_config_takes_a_needed_column_as_no_option(level_reward):
    cfg = load_config(RECIPE, [f"rewards=[{{name: {level_reward}}}]"])
    assert cfg.rewards[0].name == level_reward


# ----- end to end -------------------------------------------------------------------------------------


def _capture(monkeypatch) -> list:
    """Record every PreparedBatch the online step hands to the update."""
    seen: list = []
    real = online.policy_update

    def spy(model, optimizer, scheduler, prep, **kw):
        seen.append(prep)
        return real(model, optimizer, scheduler, prep, **kw)

    monkeypatch.setattr(online, "policy_update", spy)
    return seen


@pytest.mark.slow
def test_gsm8k_trains_as_it_is_with_a_prompt_key(tmp_path):
    if not GSM8K.is_file():
        pytest.skip(f"{GSM8K} is not here")
    # tiny-arith has 128 positions and GSM8K questions run to 849 characters: the same weights with a longer
    # context (its rotary embeddings need no new weights)
    model = shutil.copytree(ASSETS / "tiny-arith", tmp_path / "tiny-long")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 1024}))
    cfg = load_config(RECIPE, [*FAST, f"model.path={model}", f"task.train_file={GSM8K}", f"task.held_out_file={GSM8K}",
                               "task.prompt_key=question", "rewards=[{name: gsm8k}]", "accuracy_reward=gsm8k",
                               "task.allow_unknown_chars=true", "rollout.max_new_tokens=4"])
    run = build_run(cfg, tmp_path / "run")
    rows = run.fit()
    assert len(rows) == 3 and "reward/gsm8k/mean" in rows[1] and "val/arith/acc" in rows[0]
    saved = json.loads((tmp_path / "run" / DATA_FILE).read_text())["files"]
    assert [(f["split"], f["format"], f["rows"]) for f in saved] == [("train", "jsonl", 1319),
                                                                      ("held_out", "jsonl", 1319)]
    assert saved[0]["sha256"] == hashlib.sha256(GSM8K.read_bytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_chat_data_trains_the_chat_model_on_the_template_ids(tmp_path, chat_model, monkeypatch, fmt):
    rows = [{"messages": [{"role": "user", "content": f"{a}+{b}="}], "answer": str(a + b), "level": 1}
            for a in range(1, 4) for b in range(1, 3)]
    path = _files(tmp_path, rows)[fmt]
    seen = _capture(monkeypatch)
    cfg = load_config(RECIPE, [*FAST, f"model.path={chat_model}", f"task.train_file={path}",
                               f"task.held_out_file={path}", "task.system_prompt=add"])
    run = build_run(cfg, tmp_path / "run")
    rows_out = run.fit()
    assert len(rows_out) == 3 and len(seen) == 2
    tok = run.trainer.tokenizer
    for prep in seen:
        roll = prep.roll
        for i, p in enumerate(prep.prompts):
            want = tok.apply_chat_template(p.meta["messages"], add_generation_prompt=True, tokenize=True,
                                           return_dict=False)
            got = roll.prompt_ids[i][roll.prompt_mask[i].bool()].tolist()
            assert got == want and p.meta["messages"][0] == {"role": "system", "content": "add"}
            assert tok.decode(got).endswith("A: ")
        # the loss covers response tokens only: it lives on the response columns, within the response mask
        assert prep.loss_mask.shape == roll.response_ids.shape
        assert bool((prep.loss_mask <= roll.response_mask).all()) and float(prep.loss_mask.sum()) > 0
        assert torch.equal(roll.response_ids[roll.response_mask.bool()] >= 0,
                           torch.ones(int(roll.response_mask.sum()), dtype=torch.bool))
    saved = json.loads((tmp_path / "run" / DATA_FILE).read_text())["files"]
    assert {f["format"] for f in saved} == {fmt} and saved[0]["rows"] == 6


@pytest.mark.slow
def test_a_resume_refuses_changed_data(tmp_path):
    data = _jsonl(tmp_path / "d.jsonl", [{"prompt": f"{a}+1=", "answer": str(a + 1)} for a in range(1, 5)])
    cfg = load_config(RECIPE, [*FAST, "train.steps=1", "checkpoint.every=1", f"task.train_file={data}",
                               "task.held_out_size=2"])
    build_run(cfg, tmp_path / "run").fit()
    saved = json.loads((tmp_path / "run" / DATA_FILE).read_text())["files"]
    assert [(f["split"], f["rows"]) for f in saved] == [("train", 4)]
    build_run(cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": 2})}), tmp_path / "run",
              resume=True).close()  # the same data resumes
    _jsonl(data, [{"prompt": "1+1=", "answer": "2"}])
    with pytest.raises(DataError, match=r"dataset file .*d.jsonl changed since the run started .*rows 4 -> 1"):
        build_run(cfg, tmp_path / "run", resume=True)


def test_chat_template_false_keeps_plain_prompts_on_a_chat_model(chat_model):
    tok = _tokenizer(chat_model)
    plain = TASKS.get("arith")(held_out_size=2)
    assert for_tokenizer(plain, tok, use_template=False) is plain
    with pytest.raises(ConfigError, match=r"task.system_prompt is set, but task.chat_template is false"):
        for_tokenizer(plain, tok, "add", use_template=False)


def test_a_needed_column_the_training_data_lacks_stops_the_run_before_training(tmp_path, level_reward):
    data = _jsonl(tmp_path / "d.jsonl", [{"prompt": "1+1=", "answer": "2", "id": 1}])
    cfg = load_config(RECIPE, [*FAST, f"task.train_file={data}", "task.held_out_size=2",
                               f"rewards=[{{name: {level_reward}}}]"])
    with pytest.raises(DataError, match=r"'test_level_reward' needs the dataset column\(s\) 'level', which .*d.jsonl "
                                        r"lacks \(its extra columns: id\)"):
        build_run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_generated_arith_columns_reach_a_reward(tmp_path, level_reward):
    cfg = load_config(RECIPE, [*FAST, "train.steps=1", "task.held_out_size=2", f"rewards=[{{name: {level_reward}}}]"])
    rows = build_run(cfg, tmp_path / "run").fit()
    assert rows[1][f"reward/{level_reward}/mean"] == 2.0  # level 2: two-digit addition
