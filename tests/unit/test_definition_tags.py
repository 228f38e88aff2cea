"""A definition's tags reach its jobs only when propagated (AWS Batch's propagateTags)."""

from __future__ import annotations

from hpcbatch.jobdefs import DefinitionOverrides, JobDefinition, request_from_definition


def test_propagated_tags_under_the_jobs_own() -> None:
    defn = JobDefinition(name="d", command=["true"], tags={"team": "ml", "run": "0"})
    plain = request_from_definition(defn, 1, DefinitionOverrides(definition="d"))
    assert "tags" not in plain
    own = DefinitionOverrides(definition="d", tags={"run": "7"})
    assert request_from_definition(defn, 1, own)["tags"] == {"run": "7"}
    on = DefinitionOverrides(definition="d", tags={"run": "7"}, propagate_tags=True)
    assert request_from_definition(defn, 1, on)["tags"] == {"team": "ml", "run": "7"}
    propagating = defn.model_copy(update={"propagate_tags": True})
    off = DefinitionOverrides(definition="d", propagate_tags=False)
    assert "tags" not in request_from_definition(propagating, 1, off)
    assert request_from_definition(propagating, 1, DefinitionOverrides(definition="d"))["tags"] == {
        "team": "ml",
        "run": "0",
    }
