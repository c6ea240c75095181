"""The label schema: how a report speaks of each of the 18 CT-RATE findings (`FINDINGS`)."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, Field

from ctcommon.findings import FINDINGS as FINDINGS  # re-exported: the findings it labels

SCHEMA_VERSION = '1.0'


class Status(str, Enum):
    """How a report speaks of one finding. Maps to CT-RATE's 1 / 0 / -1 via `label_value`."""

    PRESENT = 'present'
    ABSENT = 'absent'
    UNCERTAIN = 'uncertain'
    NOT_MENTIONED = 'not_mentioned'

    @property
    def label_value(self) -> int:
        """present 1, uncertain -1, absent and not mentioned 0 (CT-RATE counts silence as absent)."""
        return {'present': 1, 'uncertain': -1}.get(self.value, 0)


class Location(BaseModel):
    side: str | None = Field(None, description='right, left or bilateral')
    region: str | None = Field(None, description='lobe or segment, e.g. right upper lobe')
    structure: str | None = Field(None, description='non-lung structure, e.g. aorta, pericardium')


class Descriptors(BaseModel):
    size: str | None = Field(None, description="as written in the report, e.g. '5 mm'")
    severity: str | None = Field(None, description='e.g. mild, marked')
    extent: str | None = Field(None, description='e.g. focal, diffuse, bilateral')


class FindingEvidence(BaseModel):
    """One finding as the report states it, with the report's own words."""

    finding: str
    status: Status
    quote: str | None = Field(None, description='exact substring of the report')
    location: Location = Field(default_factory=Location)
    descriptors: Descriptors = Field(default_factory=Descriptors)


class ReportAnnotation(BaseModel):
    """Everything a labeler says about one report: one `FindingEvidence` per mentioned finding."""

    report_id: str
    schema_version: str = SCHEMA_VERSION
    findings: list[FindingEvidence] = Field(default_factory=list)

    def labels(self) -> dict[str, int]:
        """The 18 CT-RATE values; a finding listed twice takes present > uncertain > absent."""
        rank = {1: 2, -1: 1, 0: 0}
        out = dict.fromkeys(FINDINGS, 0)
        for item in self.findings:
            value = item.status.label_value
            if rank[value] > rank[out[item.finding]]:
                out[item.finding] = value
        return out
