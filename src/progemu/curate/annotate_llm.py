"""The ``llm`` annotator: the paper's GPT-4 curation step against any OpenAI-compatible endpoint.

The official ProgEmu instructions were never released, so ours are versioned text files in
``llm_instructions/`` (:data:`INSTRUCTION_VERSION` names the one in use; a change of wording
gets a new file and a new version, which also invalidates the cache).

Properties the curation pipeline relies on:

- **Data use.** PhysioNet's credentialed licence forbids sending MIMIC-CXR text to public online
  services (formats.md §6). There is no default endpoint; with ``credentialed=True`` a well-known
  public API host is refused unless ``allow_public_api_with_dua=True``. Azure OpenAI (with human
  review opted out) or a local server (vLLM, Ollama, llama.cpp) are the intended targets.
- **Secrets and privacy.** The API key is read from the environment variable ``api_key_env`` only,
  never stored in the config, printed or logged. Report text is never logged at INFO level.
- **Robustness.** Retries with exponential backoff and full jitter on 429, 5xx, 408/409, timeouts,
  connection errors and malformed or schema-violating JSON; a server's ``Retry-After`` header wins
  over the computed delay. Other 4xx (bad key, unknown model) fail at once.
- **Bounded concurrency.** ``annotate`` is called from the pipeline's thread pool; a semaphore caps
  the number of requests in flight at ``concurrency``.
- **Cache.** One JSON file per (instruction version, model, report-pair hash), written atomically, so
  a re-run (or a resumed run after SIGKILL) makes no new call for a pair already answered.
"""
from __future__ import annotations

import dataclasses
import email.utils
import hashlib
import json
import logging
import os
import random
import re
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from progemu.curate.annotation import Annotation, AnnotationError, ReportText, report_pair_hash
from progemu.utils.atomic import atomic_write_json

__all__ = [
    "LLMConfig",
    "LLMAnnotator",
    "INSTRUCTION_VERSION",
    "ANSWER_JSON_SCHEMA",
    "PUBLIC_API_HOSTS",
    "load_instructions",
    "validate_answer",
    "parse_answer",
    "is_public_api_host",
]

logger = logging.getLogger(__name__)

INSTRUCTION_VERSION = "icgcxr-v1"
_INSTRUCTIONS_DIR = Path(__file__).with_name("llm_instructions")

#: hosts of public LLM APIs (and their sub-domains) that credentialed report text must not reach
PUBLIC_API_HOSTS: tuple[str, ...] = (
    "api.openai.com",
    "chatgpt.com",
    "chat.openai.com",
    "api.anthropic.com",
    "generativelanguage.googleapis.com",
    "aiplatform.googleapis.com",
    "api.mistral.ai",
    "api.groq.com",
    "api.together.xyz",
    "api.together.ai",
    "openrouter.ai",
    "api.deepseek.com",
    "api.fireworks.ai",
    "api.perplexity.ai",
    "api.cohere.ai",
    "api.cohere.com",
    "api.x.ai",
    "api-inference.huggingface.co",
    "router.huggingface.co",
    "api.deepinfra.com",
    "api.endpoints.anyscale.com",
)

_DUA_MESSAGE = (
    "PhysioNet's credentialed data use agreement (MIMIC-CXR) forbids sending the data, report text "
    "included, to third-party online services such as the OpenAI API or ChatGPT; PhysioNet points to "
    "Azure OpenAI with human review opted out, or a local model (vLLM, Ollama, llama.cpp), instead. "
    "Point --llm-base-url at such an endpoint. If your agreement with this provider does allow it, "
    "pass --allow-public-llm-with-dua (allow_public_api_with_dua=True) to acknowledge it."
)

_ANSWER_KEYS = {"prompt": str, "interpretation": str, "confidence": int, "reason": str}
#: the same schema for servers that enforce structured output (``response_format="json_schema"``);
#: :func:`validate_answer` checks it on our side either way
ANSWER_JSON_SCHEMA = {
    "type": "object",
    "properties": {
        "prompt": {"type": "string"},
        "interpretation": {"type": "string"},
        "confidence": {"type": "integer", "minimum": 1, "maximum": 5},
        "reason": {"type": "string"},
    },
    "required": ["prompt", "interpretation", "confidence", "reason"],
    "additionalProperties": False,
}
_RETRY_STATUS = {408, 409, 429}


@dataclasses.dataclass
class LLMConfig:
    """Settings of the LLM annotator (saved in ``curate_config.json``; holds no secret).

    ``base_url``: the OpenAI-compatible endpoint (e.g. ``http://localhost:8000/v1``), or the Azure
    resource endpoint (``https://NAME.openai.azure.com``) when ``api_version`` is given.
    ``model``: model name (the deployment name on Azure). ``api_key_env``: name of the environment
    variable holding the key. ``concurrency``: requests in flight at most. ``credentialed``: the
    reports come from credentialed data (MIMIC-CXR, CheXpert Plus). ``timeout_s``: per request,
    seconds. ``max_retries``: retries after the first attempt. ``backoff_base_s`` /
    ``backoff_max_s``: exponential backoff ``min(max, base * 2**attempt)`` with full jitter.
    ``cache_dir``: on-disk answer cache (None = no cache). ``response_format``: "json_object" (JSON mode,
    widest support), "json_schema" (structured output with :data:`ANSWER_JSON_SCHEMA`: OpenAI, Azure,
    vLLM) or "none" (the instructions alone ask for JSON).
    """

    base_url: str | None = None
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    api_version: str | None = None
    concurrency: int = 4
    allow_public_api_with_dua: bool = False
    cache_dir: str | None = None
    credentialed: bool = True
    timeout_s: float = 120.0
    max_retries: int = 6
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    temperature: float = 0.0
    max_tokens: int = 600
    response_format: str = "json_object"
    instruction_version: str = INSTRUCTION_VERSION
    seed: int | None = 0

    def __post_init__(self) -> None:
        if self.cache_dir is not None:
            self.cache_dir = str(self.cache_dir)
        if int(self.concurrency) < 1:
            raise ValueError(f"LLM annotator: concurrency must be >= 1, got {self.concurrency}")
        if int(self.max_retries) < 0:
            raise ValueError(f"LLM annotator: max_retries must be >= 0, got {self.max_retries}")
        if self.response_format not in ("json_object", "json_schema", "none"):
            raise ValueError(f"LLM annotator: response_format must be json_object, json_schema or none, got {self.response_format!r}")
        if float(self.timeout_s) <= 0:
            raise ValueError(f"LLM annotator: timeout_s must be > 0, got {self.timeout_s}")


def load_instructions(version: str = INSTRUCTION_VERSION) -> str:
    """The system instructions of ``version`` (file ``llm_instructions/<version>.md``)."""
    path = _INSTRUCTIONS_DIR / f"{version}.md"
    if not path.is_file():
        known = sorted(p.stem for p in _INSTRUCTIONS_DIR.glob("*.md"))
        raise ValueError(f"unknown LLM instruction version {version!r} ({path} missing); known: {known}")
    return path.read_text(encoding="utf-8").strip()


def is_public_api_host(base_url: str) -> bool:
    """True when ``base_url``'s host is (a sub-domain of) one of :data:`PUBLIC_API_HOSTS`."""
    host = (urlparse(base_url if "://" in base_url else f"https://{base_url}").hostname or "").lower().rstrip(".")
    return any(host == public or host.endswith("." + public) for public in PUBLIC_API_HOSTS)


def validate_answer(data: Any) -> list[str]:
    """Check a parsed answer against the schema; returns the list of problems (empty = valid).

    Schema: an object with exactly ``prompt`` (non-empty str), ``interpretation`` (non-empty str),
    ``confidence`` (integer 1..5; an integral float or digit string is tolerated) and ``reason`` (str).
    """
    if not isinstance(data, dict):
        return [f"answer is a {type(data).__name__}, expected a JSON object"]
    problems = []
    for key in _ANSWER_KEYS:
        if key not in data:
            problems.append(f"missing key {key!r}")
    extra = sorted(set(data) - set(_ANSWER_KEYS))
    if extra:
        problems.append(f"unexpected keys {extra}")
    for key in ("prompt", "interpretation"):
        if key in data and (not isinstance(data[key], str) or not data[key].strip()):
            problems.append(f"{key!r} must be a non-empty string")
    if "reason" in data and not isinstance(data["reason"], str):
        problems.append("'reason' must be a string")
    if "confidence" in data and _as_confidence(data["confidence"]) is None:
        problems.append(f"'confidence' must be an integer 1..5, got {data['confidence']!r}")
    return problems


def _as_confidence(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and 1 <= value <= 5:
        return value
    return None


_FENCE_RE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


def parse_answer(content: str | None) -> Annotation:
    """Parse a model's message into an :class:`Annotation`; ``ValueError`` when malformed.

    Tolerates one surrounding Markdown code fence (common with local models); nothing else.
    """
    if not content or not content.strip():
        raise ValueError("empty answer")
    match = _FENCE_RE.match(content)
    text = match.group(1) if match else content
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"answer is not valid JSON ({error.msg} at char {error.pos})") from None
    problems = validate_answer(data)
    if problems:
        raise ValueError("answer violates the schema: " + "; ".join(problems))
    return Annotation(
        prompt=" ".join(data["prompt"].split()),
        interpretation=" ".join(data["interpretation"].split()),
        confidence=_as_confidence(data["confidence"]),
        reason=" ".join(data["reason"].split()),
    )


def _user_message(prior: ReportText, followup: ReportText) -> str:
    def section(text: str) -> str:
        return text.strip() or "(missing)"

    return (
        f"PRIOR REPORT\nFINDINGS: {section(prior.findings)}\nIMPRESSION: {section(prior.impression)}\n\n"
        f"FOLLOW-UP REPORT\nFINDINGS: {section(followup.findings)}\nIMPRESSION: {section(followup.impression)}"
    )


def _retry_after_s(error: Exception) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms`` / ``Retry-After``), else None."""
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:  # an HTTP date
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, parsed.timestamp() - time.time()) if parsed is not None else None


class LLMAnnotator:
    """Annotate report pairs with an OpenAI-compatible chat model. Thread-safe.

    Construction checks the endpoint policy (no default endpoint, public hosts refused for
    credentialed data) and raises ``ValueError`` with what to do; no request is made until
    :meth:`annotate`. ``calls`` counts HTTP requests sent (retries included).
    """

    name = "llm"

    def __init__(self, config: LLMConfig) -> None:
        self.config = config
        if not config.base_url:
            raise ValueError(
                "LLM annotator: no endpoint given (--llm-base-url). progemu never defaults to a public API; "
                "give the URL of an OpenAI-compatible server you are allowed to send the reports to "
                "(a local vLLM/Ollama/llama.cpp server, or Azure OpenAI with --llm-api-version)."
            )
        if not config.model:
            raise ValueError("LLM annotator: no model given (--llm-model; the deployment name on Azure OpenAI)")
        if config.credentialed and is_public_api_host(config.base_url) and not config.allow_public_api_with_dua:
            host = urlparse(config.base_url).hostname or config.base_url
            raise ValueError(f"LLM annotator: refusing to send credentialed reports to the public API host {host!r}. {_DUA_MESSAGE}")
        if urlparse(config.base_url).scheme not in ("http", "https"):
            raise ValueError(f"LLM annotator: --llm-base-url {config.base_url!r} needs a scheme, e.g. http://localhost:8000/v1")
        self.instructions = load_instructions(config.instruction_version)
        # the version recorded in the dataset card: instruction text + model, so a card says what made the labels
        digest = hashlib.sha256(self.instructions.encode("utf-8")).hexdigest()[:8]
        self.version = f"{config.instruction_version}+{digest} model={config.model}"
        self._semaphore = threading.BoundedSemaphore(int(config.concurrency))
        self._client = None
        self._client_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self.calls = 0
        self.cache_hits = 0
        self._random = random.Random()  # jitter only; never affects results

    # ------------------------------------------------------------------ client
    def _get_client(self):
        with self._client_lock:
            if self._client is None:
                try:
                    import openai
                except ImportError as error:  # pragma: no cover - openai is in the curate extra
                    raise AnnotationError("the LLM annotator needs the openai package: pip install 'progemu[curate]'") from error
                key = os.environ.get(self.config.api_key_env)
                if not key:
                    if self.config.api_version:
                        raise AnnotationError(
                            f"Azure OpenAI needs an API key: set the environment variable {self.config.api_key_env}"
                        )
                    # local servers (vLLM, Ollama, llama.cpp) usually accept any key
                    logger.warning("environment variable %s is not set; sending a placeholder key", self.config.api_key_env)
                    key = "EMPTY"
                common = dict(api_key=key, timeout=float(self.config.timeout_s), max_retries=0)
                if self.config.api_version:
                    self._client = openai.AzureOpenAI(
                        azure_endpoint=self.config.base_url, api_version=self.config.api_version, **common
                    )
                else:
                    self._client = openai.OpenAI(base_url=self.config.base_url, **common)
            return self._client

    # ------------------------------------------------------------------- cache
    def cache_key(self, prior: ReportText, followup: ReportText) -> str:
        """SHA-256 of (instruction version, model, report-pair hash)."""
        payload = json.dumps([self.config.instruction_version, self.config.model, report_pair_hash(prior, followup)])
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def _cache_path(self, key: str) -> Path | None:
        if self.config.cache_dir is None:
            return None
        return Path(self.config.cache_dir) / self.config.instruction_version / key[:2] / f"{key}.json"

    def _cache_get(self, key: str, record_id: str) -> Annotation | None:
        path = self._cache_path(key)
        if path is None or not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return Annotation.from_dict(data["annotation"])
        except (ValueError, KeyError, TypeError) as error:
            # an unreadable entry is re-asked rather than trusted (writes are atomic, so this means manual damage)
            logger.warning("%s: ignoring unreadable LLM cache entry %s (%s)", record_id, path, type(error).__name__)
            return None

    def _cache_put(self, key: str, annotation: Annotation, record_id: str) -> None:
        path = self._cache_path(key)
        if path is None:
            return
        atomic_write_json(path, {
            "instruction_version": self.config.instruction_version,
            "model": self.config.model,
            "record_id": record_id,
            "annotation": annotation.to_dict(),
        })

    # ---------------------------------------------------------------- annotate
    def annotate(self, prior: ReportText, followup: ReportText, record_id: str) -> Annotation:
        """Annotate one pair (cache first, then the endpoint with retries); raises :class:`AnnotationError`."""
        key = self.cache_key(prior, followup)
        cached = self._cache_get(key, record_id)
        if cached is not None:
            with self._count_lock:
                self.cache_hits += 1
            logger.debug("%s: LLM cache hit", record_id)
            return cached
        annotation = self._ask(prior, followup, record_id)
        self._cache_put(key, annotation, record_id)
        return annotation

    def _ask(self, prior: ReportText, followup: ReportText, record_id: str) -> Annotation:
        import openai

        client = self._get_client()
        request: dict[str, Any] = dict(
            model=self.config.model,
            messages=[
                {"role": "system", "content": self.instructions},
                {"role": "user", "content": _user_message(prior, followup)},
            ],
            temperature=self.config.temperature,
            max_tokens=self.config.max_tokens,
        )
        if self.config.response_format == "json_schema":
            request["response_format"] = {"type": "json_schema", "json_schema": {"name": "icgcxr_annotation", "strict": True,
                                                                                "schema": ANSWER_JSON_SCHEMA}}
        elif self.config.response_format == "json_object":
            request["response_format"] = {"type": "json_object"}
        if self.config.seed is not None:
            request["seed"] = self.config.seed
        attempts = int(self.config.max_retries) + 1
        last_problem = "no attempt made"
        for attempt in range(attempts):
            wait_hint: float | None = None
            try:
                with self._semaphore:
                    with self._count_lock:
                        self.calls += 1
                    response = client.chat.completions.create(**request)
                content = response.choices[0].message.content if response.choices else None
                try:
                    return parse_answer(content)
                except ValueError as error:
                    last_problem = f"malformed answer: {error}"
            except openai.APITimeoutError:
                last_problem = f"timed out after {self.config.timeout_s:g} s"
            except openai.APIConnectionError as error:
                last_problem = f"connection error ({type(error).__name__})"
            except openai.APIStatusError as error:
                status = error.status_code
                if status in _RETRY_STATUS or status >= 500:
                    last_problem = f"HTTP {status}"
                    wait_hint = _retry_after_s(error)
                else:
                    hint = f" (check the key in ${self.config.api_key_env})" if status in (401, 403) else ""
                    raise AnnotationError(f"{record_id}: LLM endpoint answered HTTP {status}{hint}; not retried") from None
            except openai.OpenAIError as error:  # e.g. a response body the client cannot read: treat as malformed
                last_problem = f"unreadable response ({type(error).__name__})"
            if attempt + 1 >= attempts:
                break
            delay = self._backoff_s(attempt, wait_hint)
            logger.info("%s: LLM attempt %d/%d failed (%s); retrying in %.2f s", record_id, attempt + 1, attempts, last_problem, delay)
            time.sleep(delay)
        raise AnnotationError(f"{record_id}: LLM annotation failed after {attempts} attempts: {last_problem}")

    def _backoff_s(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            # the server knows its rate limit better than our schedule; cap it so a bogus header cannot stall a run
            return min(retry_after, max(self.config.backoff_max_s, 1.0) * 5)
        ceiling = min(self.config.backoff_max_s, self.config.backoff_base_s * (2 ** attempt))
        with self._count_lock:
            return self._random.uniform(0.0, ceiling)  # "full jitter": spreads retries of parallel workers
