"""Program generators: the OpenAI chat client when a key is configured, else the offline coach."""

from core.generators.base import OnProgress, ProgramGenerator
from core.generators.offline import OfflineGenerator
from core.generators.openai_chat import OpenAIChatGenerator
from core.settings import Settings


def make_generator(settings: Settings) -> ProgramGenerator:
    if settings.openai_api_key is None or not settings.uses_openai:
        return OfflineGenerator()
    return OpenAIChatGenerator(
        api_key=settings.openai_api_key.get_secret_value(),
        model=settings.openai_model,
        base_url=settings.openai_base_url,
        timeout_seconds=settings.llm_timeout_seconds,
        max_retries=settings.llm_max_retries,
        max_completion_tokens=settings.llm_max_completion_tokens,
        temperature=settings.llm_temperature,
        schema=settings.schema_flavour,
        cap_parameter=settings.token_cap_parameter,
    )


def startup_warning(generator: ProgramGenerator) -> str | None:
    """What an operator should hear before the first generation: an OpenAI-compatible server
    that does not serve the configured model."""
    return generator.missing_model_warning() if isinstance(generator, OpenAIChatGenerator) else None


__all__ = [
    "OfflineGenerator",
    "OnProgress",
    "OpenAIChatGenerator",
    "ProgramGenerator",
    "make_generator",
    "startup_warning",
]
