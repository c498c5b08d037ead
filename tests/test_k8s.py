"""Every Kubernetes manifest of the product, validated offline against the published schemas.

* Core resources (``infra/k8s/*.yaml``, the Prefect work pool's Job rendered by Prefect's own
  templating): the Kubernetes OpenAPI schemas that ``kubernetes-validate`` ships, strict (unknown
  fields are errors).
* The ``PyTorchJob`` the ``k8s`` launcher renders: the Training Operator's API types that the
  ``kubeflow-training`` package ships (generated from its OpenAPI spec): every field known, typed,
  required fields present; its pod template and metadata against the Kubernetes schemas as above
  (the API types carry no enumerations: a ``restartPolicy`` outside the operator's values passes).

No cluster runs these: they are validated, not applied (see docs/cluster.md). The Helm values
files configure charts that are not available offline; they are checked as YAML only.
"""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import REPO

KUBERNETES = "1.30.0"


def _core_errors(resource: dict) -> list[str]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(resource, KUBERNETES, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'.'.join(map(str, exc.path)) or '<root>'}: {exc.message}"]
    return []


def _kubeflow_errors(value, type_name: str, where: str) -> list[str]:
    """Errors of ``value`` as the kubeflow-training API type ``type_name`` (recursively)."""
    import kubeflow.training.models as models

    scalars = {"str": str, "int": int, "bool": bool}
    if type_name in scalars:
        ok = isinstance(value, scalars[type_name]) and not (type_name == "int" and isinstance(value, bool))
        return [] if ok else [f"{where}: {value!r} is not {type_name}"]
    if type_name.startswith("dict(str, "):
        if not isinstance(value, dict):
            return [f"{where}: not a mapping"]
        return [e for k, v in value.items() for e in _kubeflow_errors(v, type_name[10:-1], f"{where}.{k}")]
    if type_name == "V1ObjectMeta":  # core types: through a core resource that holds them
        return _core_errors({"apiVersion": "v1", "kind": "ConfigMap", "metadata": value})
    if type_name == "V1PodTemplateSpec":
        return _core_errors({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": value})
    cls = getattr(models, type_name)
    if not isinstance(value, dict):
        return [f"{where}: not a mapping ({type_name})"]
    fields = {json_name: attr for attr, json_name in cls.attribute_map.items()}
    errors = [f"{where}.{key}: unknown field of {type_name}" for key in value if key not in fields]
    errors += [e for key, v in value.items() if key in fields
               for e in _kubeflow_errors(v, cls.openapi_types[fields[key]], f"{where}.{key}")]
    try:  # required fields and enumerations: the generated model's own checks
        cls(**{fields[k]: v for k, v in value.items() if k in fields})
    except ValueError as exc:
        errors.append(f"{where}: {exc}")
    return errors


def pytorchjob_errors(manifest: dict) -> list[str]:
    """Errors of a ``kubeflow.org/v1`` ``PyTorchJob`` manifest."""
    if (manifest.get("apiVersion"), manifest.get("kind")) != ("kubeflow.org/v1", "PyTorchJob"):
        return ["not a kubeflow.org/v1 PyTorchJob"]
    return _kubeflow_errors(manifest, "KubeflowOrgV1PyTorchJob", "PyTorchJob")


def _job(tmp_path):
    from pipelines.cells import train_job

    return train_job("lmbda0.05-rho0.9", tmp_path / "cell", shards="/data/shards", preset="paper",
                     prediction="sample", train_steps=1000, lmbda=0.05, rho=0.9, overrides=[], init_from=None,
                     tags={}, experiment="cdc-grid")


@pytest.mark.parametrize("workers", [0, 3])
def test_rendered_pytorchjob_is_valid_against_the_training_operator_and_kubernetes_schemas(tmp_path, workers):
    from pipelines.launchers import KubernetesLauncher

    manifest = yaml.safe_load(KubernetesLauncher(workers=workers, gpus_per_node=8).manifest(_job(tmp_path)))
    assert pytorchjob_errors(manifest) == []


def test_the_validators_catch_what_a_cluster_would_refuse(tmp_path):
    from pipelines.launchers import KubernetesLauncher

    manifest = yaml.safe_load(KubernetesLauncher().manifest(_job(tmp_path)))
    master = manifest["spec"]["pytorchReplicaSpecs"]["Master"]
    master["replica"] = 2
    master["replicas"] = "2"
    master["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    errors = "\n".join(pytorchjob_errors(manifest))
    assert "Master.replica: unknown field" in errors and "Master.replicas: '2' is not int" in errors
    assert "imagePullPolicy: 3 is not of type" in errors
    del manifest["spec"]["pytorchReplicaSpecs"]
    assert "`pytorch_replica_specs`, must not be `None`" in "\n".join(pytorchjob_errors(manifest))
    assert _core_errors({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"portz": []}})


@pytest.mark.parametrize("path", sorted(p.name for p in (REPO / "infra" / "k8s").glob("*.yaml")
                                        if p.name != "pytorchjob.yaml"))
def test_cluster_manifests_are_valid(path):
    for resource in yaml.safe_load_all((REPO / "infra" / "k8s" / path).read_text()):
        assert _core_errors(resource) == [], (path, resource["kind"])


def test_prefect_work_pool_job_renders_to_a_valid_job():
    """The work pool's base job template, as Prefect's Kubernetes worker renders it for a flow run
    (its variables' defaults, the values a deployment sets), is a valid ``batch/v1`` Job."""
    import uuid

    from prefect.client.schemas.objects import FlowRun
    from prefect.utilities.templating import apply_values
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = json.loads((REPO / "infra" / "k8s" / "prefect-base-job-template.json").read_text())
    values = {name: spec["default"] for name, spec in template["variables"]["properties"].items() if "default" in spec}
    values.update(image="ghcr.io/cdc-pipeline/cdc:latest", namespace="cdc")
    config = KubernetesWorkerJobConfiguration.model_validate(
        apply_values(template["job_configuration"], values, remove_notset=True))
    config.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), name="grid-run", flow_id=uuid.uuid4()))
    assert config.job_manifest["spec"]["template"]["spec"]["containers"][0]["args"] == ["prefect", "flow-run",
                                                                                        "execute"]
    assert _core_errors(config.job_manifest) == []


@pytest.mark.parametrize("path", sorted(p.name for p in (REPO / "infra" / "k8s" / "helm").glob("*.yaml")))
def test_helm_values_parse(path):
    assert isinstance(yaml.safe_load((REPO / "infra" / "k8s" / "helm" / path).read_text()), dict)
