"""A generator change without a cold cache. Entries are tied to the generator identity that
made them, so a switch of model makes every valid entry a `generator_changed` miss. Before
switching, an operator can

- try the candidate model live on a sample of recently requested profiles (`trial`):
  nothing but the trial's own record is written;
- plan a pre-warm: the keys whose valid entries another identity made, and what
  regenerating them costs at the live and at the Batch API price;
- start it: one request per key, from the answers history recorded for it, submitted as
  OpenAI batches (half price, within 24 h), or run live at a bounded concurrency for
  servers without a Batch API;
- collect it (batches.py, from cron, safe twice at once): each result is
  matched by its custom_id, validated against the contract and its profile, and the valid
  ones are staged for the candidate's identity (core/store/staged_programs.py), serving nothing
  until the app runs with the candidate.

Every program asked for is a `rollout_programs` row; each state change is a conditional
update of a pending row, so two collectors never count a result twice."""
