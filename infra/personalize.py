"""Optional: the Personalize dataset group, Items schema and Items dataset, created from the schema file."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aws_cdk import aws_personalize as personalize
from constructs import Construct

__all__ = ["PersonalizeItemsDataset"]


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
        """Create the three resources; the dataset depends on the group and the schema through their ARNs."""
        super().__init__(scope, construct_id)
        self.schema = personalize.CfnSchema(self, "Schema", name=schema_name, schema=json.dumps(schema))
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
