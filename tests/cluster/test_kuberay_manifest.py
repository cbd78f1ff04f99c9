"""deploy/kuberay/rayjob.yaml checked against the RayJob custom resource's schema, without a Kubernetes cluster.

Two sources, each for its own part of the manifest:

* ``schemas/rayjob.ray.io-v1.json``: what KubeRay's CRD defines (RayJob spec, rayClusterSpec, head and worker groups,
  authOptions, ...), copied from the CRD with its provenance in ``$comment`` / ``x-source``. The CRD is structural,
  so unknown fields fail (``additionalProperties: false``), as kubectl's strict field validation rejects them.
* Kubernetes' own core/v1 types, for what KubeRay embeds from Kubernetes (pod templates, the head Service, env
  vars, ...): the schema marks those nodes ``x-kubernetes-model: <class>``, and a strict walker checks them against
  that model class of the official ``kubernetes`` Python client: every key must be a field of the model
  (``attribute_map``), nested models, lists and maps are followed (``openapi_types``), required fields must be there,
  and scalars must have their type (Quantity: an integer or a string ``kubernetes.utils.parse_quantity`` accepts,
  e.g. 4, "16", 32Gi; IntOrString: an integer or a string).

Then what the project relies on (token auth, the Ray version of requirements.txt, the entrypoint's flags), and
negative cases showing that each kind of mistake is caught, with the path of the offending field in the message.
"""
from __future__ import annotations

import copy
import datetime
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.client as k8s
import pytest
import yaml
from jsonschema import Draft202012Validator, ValidationError, validators
from kubernetes.utils import parse_quantity
from packaging.requirements import Requirement

pytestmark = pytest.mark.xdist_group("test_kuberay_manifest")  # a module-scoped fixture: one worker

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "deploy" / "kuberay" / "rayjob.yaml"
DEPLOY_README = REPO / "deploy" / "kuberay" / "README.md"
SCHEMA_FILE = Path(__file__).resolve().parent / "schemas" / "rayjob.ray.io-v1.json"

# ------------------------------------------------------------------------------------------------------------------
# The walker: a document part against a model class of the kubernetes client
# ------------------------------------------------------------------------------------------------------------------

# Fields the client types as plain ``str`` (or a map of them) that Kubernetes types as resource.Quantity, which a
# manifest may write as an integer too (the CRD: x-kubernetes-int-or-string with the Quantity pattern).
QUANTITY_FIELDS = {
    ("V1ResourceRequirements", "limits"),
    ("V1ResourceRequirements", "requests"),
    ("V1VolumeResourceRequirements", "limits"),
    ("V1VolumeResourceRequirements", "requests"),
    ("V1EmptyDirVolumeSource", "size_limit"),
    ("V1ResourceFieldSelector", "divisor"),
    ("V1PodSpec", "overhead"),
}
# Fields the client types as ``object`` that are intstr.IntOrString.
INT_OR_STRING_FIELDS = {
    ("V1HTTPGetAction", "port"),
    ("V1TCPSocketAction", "port"),
    ("V1ServicePort", "target_port"),
}
# ``object`` fields that hold free-form JSON (managedFields' fieldsV1): any value.
FREE_FORM_FIELDS = {("V1ManagedFieldsEntry", "fields_v1")}

_CONTAINER_TYPE = re.compile(r"^(List|Dict)\[(.*)\]$")
_REQUIRED: dict[str, tuple[str, ...]] = {}


def _model(name: str) -> type | None:
    cls = getattr(k8s, name, None)
    return cls if isinstance(cls, type) and hasattr(cls, "openapi_types") else None


def required_attrs(cls: type) -> tuple[str, ...]:
    """The attributes (openapi_types names) the model declares required (no default in its pydantic fields)."""
    if cls.__name__ not in _REQUIRED:
        found = []
        for name, field in cls.model_fields.items():
            attr = name if name in cls.attribute_map else field.alias
            if field.is_required() and attr in cls.attribute_map:
                found.append(attr)
        _REQUIRED[cls.__name__] = tuple(found)
    return _REQUIRED[cls.__name__]


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def check_model(value: Any, model: str, path: list) -> Iterator[tuple[list, str]]:
    """Yield (path, message) for every way ``value`` is not a valid ``model`` (a kubernetes.client class name)."""
    cls = _model(model)
    assert cls is not None, f"kubernetes.client has no model {model}"
    if not isinstance(value, dict):
        yield path, f"expected an object ({model}), got {_kind(value)}"
        return
    by_key = {key: attr for attr, key in cls.attribute_map.items()}
    for key, item in value.items():
        attr = by_key.get(key)
        if attr is None:
            yield [*path, key], f"unknown field {key!r}: Kubernetes' {model} has no such field"
        else:
            yield from check_value(item, cls.openapi_types[attr], [*path, key], (model, attr))
    for attr in required_attrs(cls):
        if cls.attribute_map[attr] not in value:
            yield path, f"missing required field {cls.attribute_map[attr]!r} of {model}"


def check_value(value: Any, type_: str, path: list, field: tuple[str, str]) -> Iterator[tuple[list, str]]:
    if value is None:
        yield path, f"null value for {field[0]}.{field[1]} (write the value, or leave the key out)"
        return
    container = _CONTAINER_TYPE.match(type_)
    if container and container.group(1) == "List":
        if not isinstance(value, list):
            yield path, f"expected a list, got {_kind(value)}"
            return
        for i, item in enumerate(value):
            yield from check_value(item, container.group(2), [*path, i], field)
    elif container:
        key_type, item_type = (t.strip() for t in container.group(2).split(",", 1))
        assert key_type == "str", type_
        if not isinstance(value, dict):
            yield path, f"expected a map, got {_kind(value)}"
            return
        for key, item in value.items():
            if not isinstance(key, str):
                yield [*path, key], f"map key must be a string, got {_kind(key)}"
            yield from check_value(item, item_type, [*path, key], field)
    elif _model(type_) is not None:
        yield from check_model(value, type_, path)
    else:
        problem = check_scalar(value, type_, field)
        if problem:
            yield path, problem


def check_scalar(value: Any, type_: str, field: tuple[str, str]) -> str | None:
    """None when ``value`` fits, else what is wrong."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if field in QUANTITY_FIELDS:
        if not (is_int or isinstance(value, str)):
            return f"expected a quantity (integer or string like 4, \"16\", 32Gi), got {_kind(value)} {value!r}"
        try:
            parse_quantity(value)
        except ValueError:
            return f"{value!r} is not a Kubernetes quantity (e.g. 4, \"500m\", 32Gi)"
        return None
    if field in INT_OR_STRING_FIELDS:
        return None if is_int or isinstance(value, str) else f"expected an integer or a string, got {_kind(value)}"
    if field in FREE_FORM_FIELDS or type_ == "object":
        return None
    if type_ == "str":
        return None if isinstance(value, str) else f"expected a string, got {_kind(value)} {value!r}"
    if type_ == "int":
        return None if is_int else f"expected an integer, got {_kind(value)} {value!r}"
    if type_ == "float":
        return None if is_int or isinstance(value, float) else f"expected a number, got {_kind(value)} {value!r}"
    if type_ == "bool":
        return None if isinstance(value, bool) else f"expected true or false, got {_kind(value)} {value!r}"
    if type_ == "datetime":
        if isinstance(value, datetime.datetime):  # yaml.safe_load reads an unquoted timestamp as one
            return None
        try:
            datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return f"expected an RFC 3339 time, got {value!r}"
        return None
    raise AssertionError(f"{field[0]}.{field[1]}: no check for the client's type {type_!r}")


# ------------------------------------------------------------------------------------------------------------------
# The schema, with x-kubernetes-model handed to the walker
# ------------------------------------------------------------------------------------------------------------------

def _kubernetes_model(validator, model, instance, schema):
    if not isinstance(instance, dict):
        return  # "type": "object" beside it reports that
    for path, message in check_model(instance, model, []):
        yield ValidationError(message, path=path)


RayJobValidator = validators.extend(Draft202012Validator, {"x-kubernetes-model": _kubernetes_model})


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(SCHEMA_FILE.read_text())


@pytest.fixture(scope="module")
def validator(schema):
    return RayJobValidator(schema)


@pytest.fixture
def manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


def json_path(parts) -> str:
    """$.spec.containers[0].name, $.rayStartParams['num-cpus'] (as jsonschema writes them)."""
    path = "$"
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", str(part)):
            path += f".{part}"
        else:
            path += "['" + str(part).replace("\\", "\\\\").replace("'", "\\'") + "']"
    return path


def problems(validator, document) -> list[str]:
    """Every schema and model error, one line each, starting with the JSON path of the field it is about."""
    lines = []
    for error in validator.iter_errors(document):
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = error.schema.get("properties", {})
            for key in sorted(set(error.instance) - set(known), key=str):
                where = json_path([*error.absolute_path, key])
                lines.append(f"{where}: unknown field (not in the RayJob CRD's schema)")
        else:
            lines.append(f"{json_path(error.absolute_path)}: {error.message}")
    return sorted(lines)


def _pods(doc: dict) -> Iterator[tuple[str, dict]]:
    cluster = doc["spec"]["rayClusterSpec"]
    yield "head", cluster["headGroupSpec"]["template"]
    for group in cluster.get("workerGroupSpecs", []):
        yield f"worker group {group['groupName']}", group["template"]
    if "submitterPodTemplate" in doc["spec"]:
        yield "submitter", doc["spec"]["submitterPodTemplate"]


def ray_pin() -> Requirement:
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and Requirement(line).name == "ray":
            return Requirement(line)
    raise AssertionError("requirements.txt has no ray requirement")


# ------------------------------------------------------------------------------------------------------------------
# The manifest
# ------------------------------------------------------------------------------------------------------------------

def test_schema_is_valid_json_schema_with_provenance(schema):
    Draft202012Validator.check_schema(schema)
    source = schema["x-source"]
    assert source["repository"] == "https://github.com/ray-project/kuberay"
    assert re.fullmatch(r"[0-9a-f]{40}", source["commit"])
    assert source["commit"] in schema["$comment"] and source["path"] in schema["$comment"]


def test_manifest_is_a_valid_rayjob(validator, manifest):
    found = problems(validator, manifest)
    assert not found, "deploy/kuberay/rayjob.yaml does not fit the RayJob schema:\n" + "\n".join(found)


def test_manifest_is_what_the_project_relies_on(manifest):
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == "RayJob"
    cluster = manifest["spec"]["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token", "token authentication is what keeps the cluster closed"
    assert manifest["spec"]["shutdownAfterJobFinishes"] is True
    assert manifest["spec"]["backoffLimit"] == 0, "a retry would start a fresh sweep on a new cluster"

    pin = ray_pin()
    ray_version = cluster["rayVersion"]
    assert pin.specifier.contains(ray_version), f"rayVersion {ray_version} is not the Ray of requirements.txt ({pin})"
    for where, pod in _pods(manifest):
        for container in pod["spec"]["containers"]:
            image = container["image"]
            repository, _, tag = image.rpartition(":")
            assert repository and tag.split("-")[0] == ray_version, (
                f"{where}: image {image} is not tagged with rayVersion {ray_version}")


def test_entrypoint_runs_tune_main_with_flags_it_accepts(manifest):
    import tune_main
    from segtune.spaces import list_spaces

    argv = shlex.split(manifest["spec"]["entrypoint"])
    assert argv[0] in ("python", "python3") and Path(argv[1]).name == "tune_main.py", argv[:2]
    parser = tune_main.build_parser(given_only=True)
    try:
        flags, unknown = parser.parse_known_args(argv[2:])
    except SystemExit:
        pytest.fail(f"tune_main.py rejects the entrypoint's flags: {argv[2:]}")
    assert not unknown, f"flags tune_main.py does not know: {unknown}"
    assert flags.resume == "auto", "--resume auto continues the sweep when the RayJob is applied again"
    assert flags.address == "auto", "the driver joins the RayJob's cluster"
    if not flags.space.endswith((".yaml", ".yml")):
        assert flags.space in {name for name, _ in list_spaces()}


def test_pods_mount_only_volumes_they_define(manifest):
    for where, pod in _pods(manifest):
        volumes = {v["name"] for v in pod["spec"].get("volumes", [])}
        for container in pod["spec"]["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{where}: {container['name']} mounts undefined volume {mount['name']}"


# ------------------------------------------------------------------------------------------------------------------
# The check can fail: each mistake is rejected, naming the field
# ------------------------------------------------------------------------------------------------------------------

def _head_container(doc):
    return doc["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]


def _worker_group(doc):
    return doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]


def _rename(mapping: dict, old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


BROKEN = {
    "misspelled spec field": (
        lambda d: _rename(d["spec"], "shutdownAfterJobFinishes", "shutdownAfterJobFinish"),
        "$.spec.shutdownAfterJobFinish: unknown field"),
    "string for an integer": (
        lambda d: d["spec"].__setitem__("backoffLimit", "0"),
        "$.spec.backoffLimit: '0' is not of type 'integer'"),
    "auth mode not in the enum": (
        lambda d: d["spec"]["rayClusterSpec"]["authOptions"].__setitem__("mode", "tokens"),
        "$.spec.rayClusterSpec.authOptions.mode: 'tokens' is not one of"),
    "unknown key in a container": (
        lambda d: _rename(_head_container(d), "resources", "resource"),
        "$.spec.rayClusterSpec.headGroupSpec.template.spec.containers[0].resource: unknown field 'resource'"),
    "unknown key in a worker's toleration": (
        lambda d: _rename(_worker_group(d)["template"]["spec"]["tolerations"][0], "operator", "operater"),
        "$.spec.rayClusterSpec.workerGroupSpecs[0].template.spec.tolerations[0].operater: unknown field"),
    "integer in rayStartParams (strings only)": (
        lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].__setitem__("num-cpus", 0),
        "$.spec.rayClusterSpec.headGroupSpec.rayStartParams['num-cpus']: 0 is not of type 'string'"),
    "worker group without groupName": (
        lambda d: _worker_group(d).pop("groupName"),
        "$.spec.rayClusterSpec.workerGroupSpecs[0]: 'groupName' is a required property"),
    "unknown key in a worker group": (
        lambda d: _rename(_worker_group(d), "minReplicas", "minReplica"),
        "$.spec.rayClusterSpec.workerGroupSpecs[0].minReplica: unknown field"),
    "bad memory quantity": (
        lambda d: _head_container(d)["resources"]["limits"].__setitem__("memory", "32GB"),
        "$.spec.rayClusterSpec.headGroupSpec.template.spec.containers[0].resources.limits.memory: '32GB' is not"),
    "string container port": (
        lambda d: _head_container(d)["ports"][0].__setitem__("containerPort", "6379"),
        "$.spec.rayClusterSpec.headGroupSpec.template.spec.containers[0].ports[0].containerPort: expected an integer"),
    "container without a name": (
        lambda d: _head_container(d).pop("name"),
        "$.spec.rayClusterSpec.headGroupSpec.template.spec.containers[0]: missing required field 'name'"),
    "containers outside the pod spec": (
        lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]["template"].__setitem__("containers", []),
        "$.spec.rayClusterSpec.headGroupSpec.template.containers: unknown field"),
    "empty volume source": (
        lambda d: _worker_group(d)["template"]["spec"]["volumes"][0].__setitem__("emptyDir", None),
        "$.spec.rayClusterSpec.workerGroupSpecs[0].template.spec.volumes[0].emptyDir: null value"),
    "unknown pod template metadata field": (
        lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]["template"].__setitem__(
            "metadata", {"generateName": "x-"}),
        "$.spec.rayClusterSpec.headGroupSpec.template.metadata.generateName: unknown field"),
}


@pytest.mark.parametrize("mistake", sorted(BROKEN))
def test_a_broken_manifest_is_rejected_naming_the_field(validator, manifest, mistake):
    assert not problems(validator, manifest)
    break_it, expected = BROKEN[mistake]
    broken = copy.deepcopy(manifest)
    break_it(broken)
    found = problems(validator, broken)
    assert any(line.startswith(expected) for line in found), f"{mistake}: expected {expected!r} among {found}"


def test_walker_knows_every_loosely_typed_field_it_meets(schema):
    """The special cases name fields the installed client has, and every ``object``-typed field reachable from the
    schema's models is one of them: a client upgrade that moves a type shows up here, not as a silent pass."""
    for model, attr in QUANTITY_FIELDS | INT_OR_STRING_FIELDS | FREE_FORM_FIELDS:
        assert attr in _model(model).openapi_types, f"{model}.{attr} is gone from the kubernetes client"
    roots = set(re.findall(r'"x-kubernetes-model": "(\w+)"', json.dumps(schema)))
    seen, untyped = set(), set()
    stack = sorted(roots)
    while stack:
        cls = _model(stack.pop())
        if cls is None or cls.__name__ in seen:
            continue
        seen.add(cls.__name__)
        for attr, type_ in cls.openapi_types.items():
            if type_ == "object":
                untyped.add((cls.__name__, attr))
            stack.extend(n for n in re.findall(r"\w+", type_) if _model(n) is not None)
    assert {"V1PodSpec", "V1Container", "V1Volume"} <= seen
    assert untyped <= INT_OR_STRING_FIELDS | FREE_FORM_FIELDS, untyped - INT_OR_STRING_FIELDS - FREE_FORM_FIELDS


# ------------------------------------------------------------------------------------------------------------------
# deploy/kuberay/README.md: its YAML and the names it shares with the manifest
# ------------------------------------------------------------------------------------------------------------------

def _fenced(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.M | re.S)


def test_readme_snippets_fit_the_manifest(validator, manifest):
    readme = DEPLOY_README.read_text()

    # The YAML snippet: the env entries to add to every Ray container on KubeRay without authOptions.
    snippets = [yaml.safe_load(block) for block in _fenced(readme, "yaml")]
    assert snippets, "deploy/kuberay/README.md has no YAML snippet any more: drop or adapt this test"
    for snippet in snippets:
        assert set(snippet) == {"env"}, f"unexpected README snippet {sorted(snippet)}: check it here"
        errors = [f"{json_path(p)}: {m}"
                  for p, m in check_value(snippet["env"], "List[V1EnvVar]", ["env"], ("V1Container", "env"))]
        assert not errors, errors
        env = {e["name"]: e for e in snippet["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        created = re.search(r"kubectl create secret generic (\S+) \\\s*--from-file=(\w+)=", readme)
        assert created and (ref["name"], ref["key"]) == created.groups(), "the token Secret the README creates"

    # The storage Secret the README creates is the one the pods read.
    storage = re.search(r"kubectl create secret generic (\S+) --from-env-file", readme).group(1)
    for where, pod in _pods(manifest):
        for container in pod["spec"]["containers"]:
            names = [src["secretRef"]["name"] for src in container.get("envFrom", []) if "secretRef" in src]
            assert names == [storage], f"{where}: envFrom {names}, README creates {storage}"

    # The Dockerfile builds on the manifest's image and puts tune_main.py where the entrypoint runs it.
    dockerfile = _fenced(readme, "dockerfile")[0]
    base = re.search(r"^FROM (\S+)", dockerfile, flags=re.M).group(1)
    assert base == _head_container(manifest)["image"]
    script = shlex.split(manifest["spec"]["entrypoint"])[1]
    assert re.search(rf"^COPY .*\btune_main\.py {re.escape(str(Path(script).parent))}/?$", dockerfile, flags=re.M)
