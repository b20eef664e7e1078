"""Optional: the Personalize dataset group, Items schema and Items dataset, created from the schema file.

``AWS::Personalize::Schema`` is replaced on any change, and a replacement with the same name fails (the new
schema is created before the old one is deleted). So the schema's name ends with a hash of its content: an
edited schema gets a new name. The schema is sent as compact JSON, whose length the config checks against
Personalize's 10,000-character limit at synth.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from aws_cdk import aws_personalize as personalize
from constructs import Construct

from infra.config import PERSONALIZE_SCHEMA_MAX_CHARS, schema_json

__all__ = ["PersonalizeItemsDataset", "schema_resource_name"]

NAME_MAX = 63
HASH_CHARS = 12


def schema_resource_name(prefix: str, schema: Mapping[str, Any]) -> str:
    """``<prefix>-<first 12 hex digits of sha256(schema JSON)>``, at most 63 characters."""
    digest = hashlib.sha256(schema_json(schema).encode()).hexdigest()[:HASH_CHARS]
    return f"{prefix[: NAME_MAX - HASH_CHARS - 1]}-{digest}"


class PersonalizeItemsDataset(Construct):
    """A dataset group with an Items dataset of the given Avro ``schema``; ``dataset_arn`` comes from it."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        dataset_group_name: str,
        dataset_name: str,
        schema_name: str,
        schema: Mapping[str, Any],
    ) -> None:
        """Create the three resources; the dataset depends on the group and the schema through their ARNs.

        :param schema_name: the prefix of the schema's name (a content hash is appended).
        """
        super().__init__(scope, construct_id)
        document = schema_json(schema)
        if len(document) > PERSONALIZE_SCHEMA_MAX_CHARS:
            raise ValueError(
                f"the schema is {len(document)} characters; Personalize allows {PERSONALIZE_SCHEMA_MAX_CHARS}"
            )
        self.schema_name = schema_resource_name(schema_name, schema)
        self.schema = personalize.CfnSchema(self, "Schema", name=self.schema_name, schema=document)
        self.dataset_group = personalize.CfnDatasetGroup(self, "DatasetGroup", name=dataset_group_name)
        self.dataset = personalize.CfnDataset(
            self,
            "ItemsDataset",
            dataset_group_arn=self.dataset_group.attr_dataset_group_arn,
            dataset_type="Items",
            name=dataset_name,
            schema_arn=self.schema.attr_schema_arn,
        )
        self.dataset_arn: str = self.dataset.attr_dataset_arn
