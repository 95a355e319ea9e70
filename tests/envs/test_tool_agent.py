"""Tool agents (Search-R1 loop, arXiv 2503.09516): formats, tools, the tool_agent environment, and the
multi-turn engine's handling of tool calls, slow tools and broken environments."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest
import torch

from rlfold.core.contracts import EnvStep
from rlfold.core.errors import ConfigError, DataError
from rlfold.core.registry import TOOLS
from rlfold.core.types import FINISH_LENGTH, FINISH_STOP, Prompt, RolloutBatch
from rlfold.envs import ENVIRONMENTS
from rlfold.envs.tool_agent import ToolAgentEnv, call_with_timeout
from rlfold.envs.tool_formats import SEARCH_R1_INVALID, Action, Doc, R1SearcherFormat, SearchR1Format
from rlfold.envs.tools import BM25Search, Calculator, PythonRunner
from rlfold.models.tiny import build_char_tokenizer
from rlfold.rollout import MultiTurnEngine, SamplingParams, requests_for

DOCS = [{"id": 0, "title": "Zorvak", "text": "Zorvak lives in Kimoro."},
        {"id": 1, "title": "Mibeto", "text": "Mibeto lives in Talune."},
        {"id": 2, "title": "Quenra", "text": "Quenra lives in Ospadi."}]


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    return str(path)


# ----- formats -------------------------------------------------------------------------------------
def test_search_r1_parses_the_first_action_and_renders_its_documents():
    f = SearchR1Format()
    tools = {"search"}
    assert f.parse("<think>hm</think><search> Zorvak </search>", tools) == Action("call", "search", "Zorvak")
    assert f.parse("<answer> Kimoro </answer><search>x</search>", tools) == Action("answer", argument="Kimoro")
    assert f.parse("<search>a</search> then <answer>b</answer>", tools).kind == "call"  # the first one counts
    assert f.parse("I think it is Kimoro", tools).kind == "invalid"
    assert f.parse("<search> unclosed", tools).kind == "invalid"
    assert f.parse("<lookup>x</lookup>", tools).kind == "invalid"  # not one of the tools
    assert f.stop_strings({"search", "calc"}) == ["</calc>", "</search>"]
    obs = f.observation("search", [Doc("Zorvak", "Zorvak lives in Kimoro."), Doc("Mibeto", "Mibeto lives in Talune.")])
    assert obs == ("\n\n<information>Doc 1(Title: Zorvak) Zorvak lives in Kimoro.\n"
                   "Doc 2(Title: Mibeto) Mibeto lives in Talune.\n</information>\n\n")
    assert f.observation("calc", "7") == "\n\n<information>7</information>\n\n"
    assert f.invalid() == SEARCH_R1_INVALID and "<search>" in f.invalid()


def test_r1_searcher_format():
    f = R1SearcherFormat()
    q = "<think> need it <|begin_of_query|> Zorvak city <|end_of_query|>"
    assert f.parse(q, {"search"}) == Action("call", "search", "Zorvak city")
    assert f.parse("<|begin_of_query|>  <|end_of_query|>", {"search"}).kind == "invalid"
    assert f.parse("done </think>\n\n<answer> Kimoro </answer>", {"search"}) == Action("answer", argument="Kimoro")
    assert f.stop_strings({"search"}) == ["<|end_of_query|>"]
    assert f.observation("search", [Doc("t", "a doc"), Doc("u", "b doc")]) == (
        "\n\n<|begin_of_documents|>\n(1)a doc\n(2)b doc\n<|end_of_documents|>\n\n")
    assert f.observation("search", []) == "\n\n<|begin_of_documents|>\nNone\n<|end_of_documents|>\n\n"


# ----- tools ---------------------------------------------------------------------------------------
def test_bm25_finds_the_entity_and_refuses_empty_queries(corpus):
    tool = TOOLS.get("bm25")(corpus=corpus, k=2)
    docs = tool("Mibeto lives in")  # "lives in" is in every document: two come back
    assert docs[0] == Doc("Mibeto", "Mibeto lives in Talune.") and len(docs) == 2
    assert tool("quenra")[0].title == "Quenra"  # case-insensitive
    with pytest.raises(ValueError, match="empty"):
        tool("   ")


def test_bm25_character_ngrams_find_a_misspelt_name(corpus):
    words, grams = BM25Search(corpus=corpus, k=1), BM25Search(corpus=corpus, k=1, ngram=3)
    assert grams("Zorvak")[0].title == words("Zorvak")[0].title == "Zorvak"
    assert grams("Zorvk")[0].title == "Zorvak" and grams("Mibetto")[0].title == "Mibeto"
    assert words("Mibetto") == []  # no indexed word: nothing found
    from rlfold.envs.tools import char_ngrams
    assert char_ngrams("Zor vak!", 3) == ["#zo", "zor", "or#", "#va", "vak", "ak#"]


def test_bm25_corpus_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "a", "text": "ok"}\n{"title": "b"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: .*'text'"):
        BM25Search(corpus=str(bad))
    with pytest.raises(DataError, match="does not exist"):
        BM25Search(corpus=str(tmp_path / "missing.jsonl"))


def test_calculator_evaluates_arithmetic_and_refuses_code():
    c = Calculator()
    assert (c("3+4*2"), c("7/2"), c("(2+3)**2"), c("-7//2")) == ("11", "3.5", "25", "-4")
    for bad, msg in [("__import__('os').system('x')", "unsupported"), ("9**99999", "exponent"), ("1/0", "zero"),
                     ("3+", "parse")]:
        with pytest.raises(ValueError, match=msg):
            c(bad)


def test_python_tool_runs_in_the_sandbox():
    p = PythonRunner(timeout_s=30)  # generous: a slow shared machine must not time out a normal program
    assert p("print(6*7)").strip() == "42"
    assert p("raise KeyError('k')").startswith("KeyError")
    with pytest.raises(TimeoutError):
        PythonRunner(timeout_s=1)("while True: pass")


# ----- the environment -------------------------------------------------------------------------------
class Raises:
    def __call__(self, argument):
        raise RuntimeError("index offline")


class Hangs:
    def __init__(self):
        self.release = threading.Event()

    def __call__(self, argument):
        self.release.wait(120)
        return "late"


class Garbage:
    def __call__(self, argument):
        return {"not": "text"}


def _env(corpus, **kw) -> ToolAgentEnv:
    return ENVIRONMENTS.get("tool_agent")(tools={"search": {"name": "bm25", "kwargs": {"corpus": corpus, "k": 1}}}, **kw)


def test_an_episode_calls_reads_and_answers(corpus):
    env = _env(corpus)
    assert env.stop_strings == ("</search>",)
    st = env.reset(Prompt("Where does Zorvak live?", "Kimoro"), 0)
    out = env.step(st, "<search> Zorvak </search>", FINISH_STOP)
    assert not out.done and out.observation == SearchR1Format().observation("search", [Doc("Zorvak", DOCS[0]["text"])])
    assert out.info["tools/calls"] == 1 and out.info["tools/errors"] == 0 and out.info["tools/latency_s"] >= 0
    out = env.step(st, "<answer> Kimoro </answer>", FINISH_STOP)
    assert out.done and out.info["tools/calls"] == 0
    assert env.step(env.reset(Prompt("q", "a"), 0), "<search> Zor", FINISH_LENGTH).done  # cut at the limit


def test_invalid_turns_get_the_retry_message_then_end(corpus):
    env = _env(corpus, max_invalid=1)
    st = env.reset(Prompt("q", "a"), 0)
    first = env.step(st, "no tags here", FINISH_STOP)
    assert first.observation == SEARCH_R1_INVALID and not first.done and first.info["tools/invalid"] == 1
    assert env.step(st, "still none", FINISH_STOP).done


@pytest.mark.parametrize("tool,status", [(Raises(), "error"), (Garbage(), "error")])
def test_failing_tools_are_reported_to_the_model(corpus, tool, status):
    env = _env(corpus)
    env.tools["search"] = tool
    out = env.step(env.reset(Prompt("q", "a"), 0), "<search> x </search>", FINISH_STOP)
    assert not out.done and out.info["tools/errors"] == 1 and out.info["tools/timeouts"] == 0
    assert "<information>error: " in out.observation


def test_a_hanging_tool_times_out_and_the_episode_goes_on(corpus):
    env = _env(corpus, timeout_s=0.3)
    hang = Hangs()
    env.tools["search"] = hang
    t0 = time.perf_counter()
    out = env.step(env.reset(Prompt("q", "a"), 0), "<search> x </search>", FINISH_STOP)
    assert time.perf_counter() - t0 < 60  # the tool hangs for 120 s unless released: the call was abandoned
    assert out.info["tools/timeouts"] == 1 and out.info["tools/errors"] == 1 and "timed out after 0.3 s" in out.observation
    hang.release.set()
    assert call_with_timeout(lambda a: a.upper(), "ok", 30.0) == ("ok", "OK")


def test_bad_environment_options(corpus):
    with pytest.raises(ConfigError, match="at least one tool"):
        ToolAgentEnv(tools={})
    with pytest.raises(KeyError, match="unknown tool 'bm52'"):
        ToolAgentEnv(tools={"search": {"name": "bm52"}})
    with pytest.raises(KeyError, match="tool-call format"):
        ToolAgentEnv(tools={"calc": {"name": "calculator"}}, format="serch_r1")


# ----- the multi-turn loop with tools ------------------------------------------------------------------
class ScriptEngine:
    """Writes scripted turns: turn k of an episode of prompt ``p`` is ``script[p.text][k]`` (char-level ids, each
    turn ended by eos, log-prob -1 per token; k = the eos tokens already in the context). Records the stop
    strings it was asked to honour."""

    pad_id, shares_weights = 0, True

    def __init__(self, tok, script: dict[str, list[str]]):
        self.tok, self.script, self.stops = tok, script, []

    def generate(self, requests, params, seed):
        self.stops.append(list(params.stop_strings))
        eos = self.tok.eos_token_id
        prompts, ids, texts = [], [], []
        for r in requests:
            for _ in range(params.n):
                ctx = list(r.context_ids) if r.context_ids is not None else self.tok(r.prompt.text)["input_ids"]
                text = self.script[r.prompt.text][ctx.count(eos)]
                prompts.append(ctx)
                texts.append(text)
                ids.append(self.tok(text, add_special_tokens=False)["input_ids"] + [eos])
        p_w, r_w = max(map(len, prompts)), max(map(len, ids))
        return RolloutBatch(
            prompt_ids=torch.tensor([[0] * (p_w - len(p)) + p for p in prompts]),
            prompt_mask=torch.tensor([[0] * (p_w - len(p)) + [1] * len(p) for p in prompts]),
            response_ids=torch.tensor([x + [0] * (r_w - len(x)) for x in ids]),
            response_mask=torch.tensor([[1] * len(x) + [0] * (r_w - len(x)) for x in ids]),
            sample_logprobs=torch.tensor([[-1.0] * len(x) + [0.0] * (r_w - len(x)) for x in ids]),
            policy_logprobs=torch.tensor([[-1.0] * len(x) + [0.0] * (r_w - len(x)) for x in ids]),
            finish_reasons=[FINISH_STOP] * len(ids), response_texts=texts)


class SlowTool:
    """Sleeps ``delay`` per call; counts the calls in flight at once (``most``)."""

    def __init__(self, delay):
        self.delay, self.threads, self.running, self.most = delay, set(), 0, 0
        self.lock = threading.Lock()

    def __call__(self, argument):
        with self.lock:
            self.threads.add(threading.get_ident())
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(self.delay)
        with self.lock:
            self.running -= 1
        return [Doc("Zorvak", "Zorvak lives in Kimoro.")]


def _loop(script, env, workers=8, max_turns=4):
    tok = build_char_tokenizer()
    inner = ScriptEngine(tok, script)
    return MultiTurnEngine(inner, tok, env, max_turns=max_turns, turn_budget="per_turn", workers=workers), inner, tok


Q, M = "Where does Zorvak live?\n", "What is 3+4?\n"


def test_tool_calls_stop_the_turn_and_results_are_masked_observations(corpus):
    script = {Q: ["<search> Zorvak </search>", "<answer> Kimoro </answer>"], M: ["<answer> 7 </answer>"]}
    eng, inner, tok = _loop(script, _env(corpus))
    b = eng.generate(requests_for([Prompt(Q, "Kimoro"), Prompt(M, "7")]), SamplingParams(n=1, max_new_tokens=40), 0)
    assert inner.stops == [["</search>"], ["</search>"]]  # every turn stops at the env's call tag
    obs = SearchR1Format().observation("search", [Doc("Zorvak", "Zorvak lives in Kimoro.")])
    assert b.response_texts[0] == "<search> Zorvak </search>" + obs + "<answer> Kimoro </answer>"
    assert b.response_texts[1] == "<answer> 7 </answer>"
    assert b.extras["turns"] == [2, 1] and b.extras["tools/calls"] == [1.0, 0.0] and b.extras["env/errors"] == [0, 0]
    ids = b.response_ids[0, b.response_attention_mask[0].bool()].tolist()
    obs_ids = tok(obs, add_special_tokens=False)["input_ids"]
    start = len(tok("<search> Zorvak </search>", add_special_tokens=False)["input_ids"]) + 1  # + eos of turn 1
    assert ids[start:start + len(obs_ids)] == obs_ids
    mask = b.response_mask[0].tolist()
    assert mask[start:start + len(obs_ids)] == [0] * len(obs_ids) and sum(mask) == len(ids) - len(obs_ids)
    assert b.policy_logprobs[0, start:start + len(obs_ids)].abs().sum() == 0


@pytest.mark.parametrize("workers", [8, 1])
def test_tools_of_different_episodes_run_concurrently(corpus, workers):
    env = _env(corpus)
    slow = SlowTool(1.0)
    env.tools["search"] = slow
    eng, _, _ = _loop({Q: ["<search> Zorvak </search>", "<answer> Kimoro </answer>"]}, env, workers=workers)
    b = eng.generate(requests_for([Prompt(Q, "Kimoro")]), SamplingParams(n=8, max_new_tokens=40), seed=0)
    assert b.extras["tools/calls"] == [1.0] * 8
    if workers > 1:  # the calls of different episodes were in flight at the same time, in several threads
        assert slow.most > 1 and len(slow.threads) > 1
    else:
        assert slow.most == 1  # one call at a time (each still in its own timeout thread)
    assert sum(b.extras["tools/latency_s"]) >= 8 * 1.0 * 0.9


class BrokenEnv:
    """Raises in ``step`` on "boom", answers garbage on "junk", raises in ``reset`` for a prompt "reset me"."""

    stop_strings = ("</search>",)

    def reset(self, prompt, seed):
        if prompt.text == "reset me":
            raise RuntimeError("cannot start")
        return {"turns": 0}

    def step(self, state, text, finish):
        if text == "boom":
            raise ValueError("the env crashed")
        if text == "junk":
            return {"observation": 3}
        state["turns"] += 1
        return EnvStep(observation="ok", done=state["turns"] > 1, info={"seen": 1.0})


def test_a_broken_environment_ends_its_episode_counts_it_and_the_batch_goes_on(caplog):
    script = {"a": ["fine", "fine again"], "b": ["boom"], "c": ["junk"], "reset me": ["fine"]}
    eng, _, _ = _loop(script, BrokenEnv())
    prompts = [Prompt(t, "x") for t in script]
    with caplog.at_level(logging.WARNING, logger="rlfold"):
        b = eng.generate(requests_for(prompts), SamplingParams(n=1, max_new_tokens=20), seed=0)
    assert b.extras["env/errors"] == [0.0, 1.0, 1.0, 1.0]
    assert b.extras["turns"] == [2, 1, 1, 1] and b.extras["env/seen"] == [2.0, 0.0, 0.0, 0.0]
    assert b.response_texts == ["fine" + "ok" + "fine again", "boom", "junk", "fine"]
    text = caplog.text
    assert "ValueError: the env crashed on row 1" in text and "not an EnvStep" in text and "reset raised" in text
