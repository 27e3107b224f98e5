"""The cold-start training record: LLaMA-Factory's "sharegpt" form, written and read here only.

A row is ``{"messages": [user, assistant], "images": ["images/x.png"]}``: the user turn
holds one ``<image>`` token per image, the image paths are relative to the JSON file, and
a cold-start assistant turn is ``<think>\\n{CoT}\\n</think>\\n<answer>{answer}</answer>``.
LLaMA-Factory's two most common data errors — a token count that differs from the number
of images, and ``images`` given as a string — are refused when a row is read.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

IMAGE_TOKEN = "<image>"
DATA_FILE = "cold.json"
DATASET_INFO_FILE = "dataset_info.json"
_IMAGE_TOKEN = re.compile(re.escape(IMAGE_TOKEN) + r"\s*")


class Turn(BaseModel):
    """One message of a conversation."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class SharegptRow(BaseModel):
    """One training conversation and the images its user turns show, in order."""

    model_config = ConfigDict(extra="ignore")

    messages: list[Turn] = Field(min_length=1)
    images: list[str] = Field(default_factory=list)

    @field_validator("images", mode="before")
    @classmethod
    def _images_are_a_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError("`images` must be a list of paths, not a string")
        return [] if value is None else value

    @model_validator(mode="after")
    def _one_token_per_image(self) -> SharegptRow:
        tokens = sum(t.content.count(IMAGE_TOKEN) for t in self.messages if t.role == "user")
        if tokens != len(self.images):
            raise ValueError(f"{tokens} {IMAGE_TOKEN} tokens but {len(self.images)} images")
        if not any(t.role == "assistant" for t in self.messages):
            raise ValueError("the row has no assistant turn")
        return self


def user_turn(question: str, n_images: int) -> str:
    """One ``<image>`` token per image, then the question (tokens already in it are moved;
    the text is otherwise kept as it is, so a prompt trains as it will be asked)."""
    return IMAGE_TOKEN * n_images + _IMAGE_TOKEN.sub("", question).lstrip()


def assistant_turn(cot: str, answer: str) -> str:
    """The cold-start training target: the CoT in ``<think>``, the answer in ``<answer>``."""
    return f"<think>\n{cot.strip()}\n</think>\n<answer>{answer.strip()}</answer>"


def sharegpt_row(question: str, assistant: str, images: list[str]) -> SharegptRow:
    """A user turn showing ``images`` and asking ``question``, and the assistant's answer."""
    messages = [
        Turn(role="user", content=user_turn(question, len(images))),
        Turn(role="assistant", content=assistant),
    ]
    return SharegptRow(messages=messages, images=images)


def dataset_info(name: str) -> dict[str, Any]:
    """The ``dataset_info.json`` entry LLaMA-Factory needs to load ``DATA_FILE``."""
    return {
        name: {
            "file_name": DATA_FILE,
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
            },
        }
    }
