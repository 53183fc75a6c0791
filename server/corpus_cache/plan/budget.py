"""How many tokens of corpus one request may carry: the size of a shard. Pure.

The least of up to three bounds (docs/caching.md, "How large a shard is"):

- the window: the model's context window less a reserve for the question, a conversation
  and the answer, and below a price tier's boundary (Haiku 5.5 bills every token of a
  prompt over 100k at 5x); always;
- the price of a question: a warm question (the shard read from the cache, a question of
  50 tokens and an answer of 500) costs about `warm_question_usd`; $0.05 gives 449k tokens
  on Claude Sonnet 5.5 and 148k on Sonnet 4.6. Left unset (None), $0.05 once the corpus
  needs more than one shard of the window anyway; 0 turns it off;
- the rate limits (`build_minutes`, when set and the limit is known): a shard the
  account's input-token limit writes in that many minutes of staged build
  (plan/staging.py).

Why the price bounds only a corpus beyond one window by default: a corpus that fits one
request is answered from all of it, and cutting it would make every question depend on
routing. Beyond the window routing is needed anyway, and on Django's and SQLAlchemy's
docs, held out, the $0.05 shards with the runner-up asked when the routing is unsure
(plan/route.py) include a right shard more often than the window's shards do, reading
about a third fewer tokens a question (docs/caching.md, "How large a shard is").
"""

from __future__ import annotations

from corpus_cache.models.catalog import ModelSpec

DEFAULT_RESERVE = 16_000  # the question, a conversation so far, and the answer
QUESTION_TOKENS = 50  # the question and answer a warm question's price assumes
ANSWER_TOKENS = 500
# What a warm question costs by default once a corpus needs several shards (see above).
DEFAULT_WARM_QUESTION_USD = 0.05


def window_budget(model: ModelSpec, reserve: int = DEFAULT_RESERVE) -> int:
    """The context window less the reserve; below a price tier's boundary when the model has
    one."""
    limit = model.context_window
    if model.price_tiers:
        limit = min(limit, model.price_tiers[0].above_tokens)
    return max(1, limit - reserve)


def price_budget(model: ModelSpec, warm_question_usd: float) -> int:
    """The shard whose warm question costs `warm_question_usd`: read from the cache, with a
    question and an answer of the usual size."""
    input_price, output_price = model.input_usd_per_mtok, model.output_usd_per_mtok
    asking = (QUESTION_TOKENS * input_price + ANSWER_TOKENS * output_price) * 1e-6
    per_token = input_price * model.cache_read_multiplier * 1e-6
    if per_token <= 0:
        return 2**62  # reads are free: the price sets no bound
    return max(1, int((warm_question_usd - asking) / per_token))


def build_budget(input_tokens_per_minute: int, build_minutes: float) -> int:
    """The shard a staged build writes in `build_minutes` under the input-token limit: a
    minute's worth per minute, the bucket being full when it starts."""
    return max(1, int(input_tokens_per_minute * build_minutes))


def default_budget(
    model: ModelSpec,
    reserve: int = DEFAULT_RESERVE,
    *,
    warm_question_usd: float | None = None,
    input_tokens_per_minute: int | None = None,
    build_minutes: float | None = None,
    corpus_tokens: int | None = None,
) -> int:
    """The least of the window's budget, the price's and the rate limits' (if
    `build_minutes` is set and the limit known). The price: `warm_question_usd` when set
    (0: none); unset, the default price once `corpus_tokens` exceed the window's budget."""
    window = window_budget(model, reserve)
    budget = window
    if warm_question_usd is None and corpus_tokens is not None and corpus_tokens > window:
        warm_question_usd = DEFAULT_WARM_QUESTION_USD
    if warm_question_usd:
        budget = min(budget, price_budget(model, warm_question_usd))
    if input_tokens_per_minute is not None and build_minutes is not None:
        budget = min(budget, build_budget(input_tokens_per_minute, build_minutes))
    return budget
