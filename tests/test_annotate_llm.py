"""The LLM annotator against a loopback OpenAI-compatible server (tests/fake_llm_server.py)."""
from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from fake_llm_server import GOOD_ANSWER, FakeLLMServer
from progemu.curate.annotate_llm import (
    LLMAnnotator,
    is_public_api_host,
    load_instructions,
    parse_answer,
    validate_answer,
)
from progemu.curate.annotation import Annotation, AnnotationError, ReportText, make_annotator

PRIOR = ReportText("Lungs are clear. No pleural effusion.", "No acute cardiopulmonary process.")
FOLLOWUP = ReportText("Blunting of the left costophrenic angle.", "New small left pleural effusion.")
SECRET = "sk-test-SECRET-5f3a9c"


def _annotator(server: FakeLLMServer, tmp_path=None, **options) -> LLMAnnotator:
    options.setdefault("backoff_base_s", 0.01)
    options.setdefault("backoff_max_s", 0.05)
    options.setdefault("timeout_s", 5.0)
    return make_annotator(
        "llm",
        base_url=server.base_url,
        model="fake-model",
        api_key_env="PROGEMU_TEST_LLM_KEY",
        cache_dir=str(tmp_path / "cache") if tmp_path is not None else None,
        **options,
    )


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("PROGEMU_TEST_LLM_KEY", SECRET)


def test_good_answer_and_request_content():
    with FakeLLMServer(["good"]) as server:
        annotator = _annotator(server)
        ann = annotator.annotate(PRIOR, FOLLOWUP, "rec-1")
    assert ann == Annotation(**GOOD_ANSWER)
    assert ann.to_comment() == {"confidence": 5, "reason": GOOD_ANSWER["reason"]}
    assert server.calls == 1 and annotator.calls == 1
    request = server.requests[0]
    assert request["model"] == "fake-model"
    assert request["response_format"] == {"type": "json_object"}
    assert request["messages"][0]["content"] == load_instructions()
    user = request["messages"][1]["content"]
    assert "New small left pleural effusion." in user and "Lungs are clear." in user
    assert user.index("PRIOR REPORT") < user.index("FOLLOW-UP REPORT")
    assert server.auth_headers == [f"Bearer {SECRET}"]
    assert annotator.name == "llm" and annotator.version.startswith("icgcxr-v1+") and "fake-model" in annotator.version


def test_retries_on_429_500_malformed_then_success(tmp_path):
    script = ["ratelimit", "error500", "error503", "malformed", "bad_schema", "good"]
    with FakeLLMServer(script, retry_after=0.2) as server:
        annotator = _annotator(server, max_retries=5)
        start = time.monotonic()
        ann = annotator.annotate(PRIOR, FOLLOWUP, "rec-2")
        elapsed = time.monotonic() - start
    assert ann.prompt == GOOD_ANSWER["prompt"]
    assert server.calls == 6
    assert server.behaviours == script
    # Retry-After: 0.2 s was honoured (our own backoff is capped at 0.05 s per retry here)
    assert elapsed >= 0.2


def test_timeout_is_retried():
    with FakeLLMServer(["slow", "good"], slow_s=1.5) as server:
        annotator = _annotator(server, timeout_s=0.3, max_retries=2)
        start = time.monotonic()
        ann = annotator.annotate(PRIOR, FOLLOWUP, "rec-3")
        elapsed = time.monotonic() - start
    assert ann.confidence == 5
    assert server.calls == 2
    assert elapsed < 1.4  # the slow answer was not waited for


def test_malformed_forever_raises_annotation_error_naming_record():
    with FakeLLMServer(default="malformed") as server:
        annotator = _annotator(server, max_retries=2)
        with pytest.raises(AnnotationError, match=r"rec-4: LLM annotation failed after 3 attempts: malformed"):
            annotator.annotate(PRIOR, FOLLOWUP, "rec-4")
    assert server.calls == 3


def test_answer_without_choices_is_retried():
    with FakeLLMServer([{"status": 200, "body": {"id": "x", "object": "chat.completion"}}, "good"]) as server:
        ann = _annotator(server).annotate(PRIOR, FOLLOWUP, "rec-8")
    assert ann.confidence == 5 and server.calls == 2


def test_auth_error_not_retried():
    with FakeLLMServer(default="error401") as server:
        annotator = _annotator(server, max_retries=4)
        with pytest.raises(AnnotationError, match=r"rec-5: .*HTTP 401.*PROGEMU_TEST_LLM_KEY"):
            annotator.annotate(PRIOR, FOLLOWUP, "rec-5")
    assert server.calls == 1


def test_cache_second_run_makes_no_calls(tmp_path):
    pairs = [
        (ReportText(f"Finding {i}.", f"Impression {i}."), ReportText(f"Finding {i} later.", f"Impression {i} later."))
        for i in range(4)
    ]
    with FakeLLMServer() as server:
        first = [_annotator(server, tmp_path).annotate(p, f, f"r{i}") for i, (p, f) in enumerate(pairs)]
        assert server.calls == 4
        again = _annotator(server, tmp_path)  # a new process would build a new annotator
        second = [again.annotate(p, f, f"r{i}") for i, (p, f) in enumerate(pairs)]
        assert server.calls == 4 and again.calls == 0 and again.cache_hits == 4
        assert first == second
        # another model or another instruction version is another cache entry
        other = make_annotator("llm", base_url=server.base_url, model="other-model", api_key_env="PROGEMU_TEST_LLM_KEY",
                               cache_dir=str(tmp_path / "cache"))
        other.annotate(*pairs[0], "r0")
        assert server.calls == 5
    files = list((tmp_path / "cache").rglob("*.json"))
    assert len(files) == 5
    assert not list((tmp_path / "cache").rglob("*.tmp"))
    entry = json.loads(files[0].read_text())
    assert set(entry) == {"instruction_version", "model", "record_id", "annotation"}


def test_failed_pair_is_not_cached(tmp_path):
    with FakeLLMServer(["malformed"], default="good") as server:
        annotator = _annotator(server, tmp_path, max_retries=0)
        with pytest.raises(AnnotationError):
            annotator.annotate(PRIOR, FOLLOWUP, "rec-6")
        assert annotator.annotate(PRIOR, FOLLOWUP, "rec-6").confidence == 5
        assert server.calls == 2


def test_bounded_concurrency_from_thread_pool(tmp_path):
    with FakeLLMServer(default="slow", slow_s=0.15) as server:
        annotator = _annotator(server, concurrency=2)
        pairs = [(ReportText(f"F{i}.", f"I{i}."), ReportText(f"G{i}.", f"J{i}.")) for i in range(8)]
        with ThreadPoolExecutor(max_workers=6) as pool:
            results = list(pool.map(lambda item: annotator.annotate(*item[1], f"r{item[0]}"), enumerate(pairs)))
    assert len(results) == 8 and server.calls == 8
    assert server.max_in_flight == 2


@pytest.mark.parametrize("url", [
    "https://api.openai.com/v1", "https://API.OpenAI.com", "http://api.openai.com:443/v1",
    "https://eu.api.openai.com/v1", "https://openrouter.ai/api/v1", "https://api.groq.com/openai/v1",
])
def test_public_host_refused_for_credentialed_data(url):
    assert is_public_api_host(url)
    with pytest.raises(ValueError, match=r"(?s)refusing.*PhysioNet.*data use agreement.*--allow-public-llm-with-dua"):
        make_annotator("llm", base_url=url, model="gpt-4o", credentialed=True)
    # acknowledged: allowed (no request is made at construction)
    make_annotator("llm", base_url=url, model="gpt-4o", credentialed=True, allow_public_api_with_dua=True)
    # synthetic data is not credentialed
    make_annotator("llm", base_url=url, model="gpt-4o", credentialed=False)


@pytest.mark.parametrize("url", [
    "http://localhost:8000/v1", "http://127.0.0.1:11434/v1", "https://myres.openai.azure.com",
    "https://api.openai.com.evil.example/v1",
])
def test_private_hosts_allowed(url):
    assert not is_public_api_host(url) and is_public_api_host("api.openai.com")
    make_annotator("llm", base_url=url, model="m", credentialed=True)


def test_no_default_endpoint():
    with pytest.raises(ValueError, match="never defaults to a public API"):
        make_annotator("llm", model="gpt-4o", credentialed=False)
    with pytest.raises(ValueError, match="no model"):
        make_annotator("llm", base_url="http://localhost:8000/v1")
    with pytest.raises(ValueError, match="needs a scheme"):
        make_annotator("llm", base_url="localhost:8000/v1", model="m")
    with pytest.raises(ValueError, match="unknown options"):
        make_annotator("llm", base_url="http://localhost:8000/v1", model="m", temprature=0.2)


def test_key_and_report_text_never_logged(caplog):
    caplog.set_level(logging.DEBUG)
    with FakeLLMServer(["ratelimit", "malformed", "good"]) as server:
        annotator = _annotator(server)
        annotator.annotate(PRIOR, FOLLOWUP, "rec-7")
    everything = "\n".join(record.getMessage() for record in caplog.records)
    assert SECRET not in everything
    assert SECRET not in repr(annotator.config) and SECRET not in annotator.version
    info = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    assert "rec-7" in info  # retries are reported, by record id
    for text in (PRIOR.findings, FOLLOWUP.impression, "costophrenic"):
        assert text not in info


def test_azure_client_used_when_api_version_given(monkeypatch):
    import openai

    annotator = make_annotator("llm", base_url="https://myres.openai.azure.com", model="gpt4o-deploy",
                               api_version="2024-06-01", api_key_env="PROGEMU_TEST_LLM_KEY")
    client = annotator._get_client()
    assert isinstance(client, openai.AzureOpenAI)
    assert "gpt4o-deploy" in str(client.base_url) or client._azure_deployment in (None, "gpt4o-deploy")
    monkeypatch.delenv("PROGEMU_TEST_LLM_KEY")
    fresh = make_annotator("llm", base_url="https://myres.openai.azure.com", model="d", api_version="2024-06-01",
                           api_key_env="PROGEMU_TEST_LLM_KEY")
    with pytest.raises(AnnotationError, match="PROGEMU_TEST_LLM_KEY"):
        fresh._get_client()


def test_schema_validator():
    assert validate_answer(GOOD_ANSWER) == []
    assert validate_answer([1]) == ["answer is a list, expected a JSON object"]
    problems = validate_answer({"prompt": "", "interpretation": "x", "confidence": 0, "reason": 3, "extra": 1})
    assert len(problems) == 4
    assert validate_answer({**GOOD_ANSWER, "confidence": True}) != []
    assert validate_answer({**GOOD_ANSWER, "confidence": 4.0}) == []
    fenced = "```json\n" + json.dumps({**GOOD_ANSWER, "confidence": "3"}) + "\n```"
    assert parse_answer(fenced).confidence == 3
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_answer("The answer is: {")
    with pytest.raises(ValueError, match="empty"):
        parse_answer("")


def test_retry_after_header_forms_and_instruction_versions():
    import email.utils

    from progemu.curate.annotate_llm import _retry_after_s

    class Err:
        def __init__(self, headers):
            self.response = type("R", (), {"headers": headers})()

    assert _retry_after_s(Err({"retry-after": "2"})) == 2.0
    assert _retry_after_s(Err({"retry-after-ms": "250", "retry-after": "9"})) == 0.25
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= _retry_after_s(Err({"retry-after": future})) <= 31
    assert _retry_after_s(Err({"retry-after": "soon"})) is None
    assert _retry_after_s(Err({})) is None
    with pytest.raises(ValueError, match="unknown LLM instruction version 'nope'"):
        make_annotator("llm", base_url="http://localhost:1/v1", model="m", instruction_version="nope")


def test_structured_output_modes():
    from progemu.curate.annotate_llm import ANSWER_JSON_SCHEMA

    with FakeLLMServer(["good", "good"]) as server:
        _annotator(server, response_format="json_schema").annotate(PRIOR, FOLLOWUP, "rec-9")
        _annotator(server, response_format="none").annotate(PRIOR, FOLLOWUP, "rec-10")
    schema_request, plain_request = server.requests
    assert schema_request["response_format"]["type"] == "json_schema"
    assert schema_request["response_format"]["json_schema"]["schema"] == ANSWER_JSON_SCHEMA
    assert "response_format" not in plain_request
    assert validate_answer(GOOD_ANSWER) == [] and set(ANSWER_JSON_SCHEMA["required"]) == set(GOOD_ANSWER)
    with pytest.raises(ValueError, match="response_format"):
        make_annotator("llm", base_url="http://localhost:1/v1", model="m", response_format="xml")
