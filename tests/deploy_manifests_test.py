#!/usr/bin/python3
"""The container and cluster files agree with each other and with the server: no container engine
or cluster runs here, so this checks what can be checked — every field the files rely on."""
import os
import re
import unittest

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
K8S = os.path.join(ROOT, "deploy", "k8s")


def load(name):
    with open(os.path.join(K8S, name)) as f:
        return yaml.safe_load(f)


def server_flags():
    return set(re.findall(r"ABSL_FLAG\([^,]+, (\w+),", open(os.path.join(ROOT, "server", "main.cc")).read()))


class Kubernetes(unittest.TestCase):
    def setUp(self):
        self.dep, self.svc = load("deployment.yaml"), load("service.yaml")
        self.pod = self.dep["spec"]["template"]
        self.c = self.pod["spec"]["containers"][0]

    def test_kustomization_lists_every_manifest(self):
        files = {f for f in os.listdir(K8S) if f.endswith(".yaml") and f != "kustomization.yaml"}
        self.assertEqual(set(load("kustomization.yaml")["resources"]), files)

    def test_deployment(self):
        self.assertEqual(self.dep["kind"], "Deployment")
        labels = self.pod["metadata"]["labels"]
        self.assertEqual(self.dep["spec"]["selector"]["matchLabels"].items() - labels.items(), set())
        ports = {p["name"]: p["containerPort"] for p in self.c["ports"]}
        self.assertEqual(ports, {"grpc": 50051, "metrics": 9464})
        self.assertEqual(self.c["readinessProbe"]["grpc"]["port"], 50051)
        self.assertEqual(self.c["livenessProbe"]["grpc"]["port"], 50051)
        self.assertIn("cpu", self.c["resources"]["requests"])
        self.assertTrue(self.pod["spec"]["securityContext"]["runAsNonRoot"])
        for arg in self.c["args"]:
            self.assertIn(arg.split("=")[0].lstrip("-"), server_flags(), arg)
        mount = self.c["volumeMounts"][0]
        vol = next(v for v in self.pod["spec"]["volumes"] if v["name"] == mount["name"])
        self.assertEqual(mount["mountPath"], "/models")  # the image's --model_dir
        self.assertEqual(vol["persistentVolumeClaim"]["claimName"], load("pvc.yaml")["metadata"]["name"])

    def test_headless_service_selects_the_pods(self):
        self.assertEqual(self.svc["spec"]["clusterIP"], "None")
        self.assertEqual(self.svc["spec"]["selector"].items() - self.pod["metadata"]["labels"].items(), set())
        names = {p["name"]: p["targetPort"] for p in self.svc["spec"]["ports"]}
        self.assertEqual(names, {"grpc": "grpc", "metrics": "metrics"})

    def test_shared_store_hpa_pdb_servicemonitor(self):
        self.assertEqual(load("pvc.yaml")["spec"]["accessModes"], ["ReadWriteMany"])
        hpa = load("hpa.yaml")
        self.assertEqual(hpa["spec"]["scaleTargetRef"]["name"], self.dep["metadata"]["name"])
        self.assertEqual(hpa["spec"]["metrics"][0]["resource"]["name"], "cpu")
        pdb = load("pdb.yaml")
        self.assertEqual(pdb["spec"]["selector"]["matchLabels"].items() - self.pod["metadata"]["labels"].items(), set())
        sm = load("servicemonitor.yaml")
        self.assertEqual(sm["spec"]["selector"]["matchLabels"].items() - self.svc["metadata"]["labels"].items(), set())
        self.assertEqual(sm["spec"]["endpoints"][0]["port"], "metrics")
        self.assertEqual(sm["spec"]["endpoints"][0]["path"], "/metrics")


class ContainerAndCompose(unittest.TestCase):
    def test_dockerfile(self):
        text = open(os.path.join(ROOT, "Dockerfile")).read()
        self.assertEqual(re.findall(r"^FROM (\S+)", text, re.M), ["debian:bookworm-slim"] * 2)
        self.assertIn("./deploy/install-deps.sh", text)           # the same script CI runs
        self.assertIn("install-deps.sh build", text)
        self.assertIn("install-deps.sh runtime", text)
        self.assertRegex(text, r"(?m)^USER aeserve$")
        self.assertRegex(text, r"(?m)^EXPOSE 50051 9464$")
        self.assertRegex(text, r"(?m)^  CMD /usr/local/bin/aectl .* health$")  # gRPC health
        self.assertIn('VOLUME ["/models"]', text)
        entrypoint = re.search(r"(?m)^ENTRYPOINT (.*)$", text).group(1)
        flags = re.findall(r"--(\w+)=", entrypoint)
        self.assertEqual(flags, ["model_dir", "port", "metrics_port"])
        for flag in flags:
            self.assertIn(flag, server_flags())

    def test_compose(self):
        path = os.path.join(ROOT, "deploy", "compose", "docker-compose.yml")
        compose = yaml.safe_load(open(path))
        self.assertEqual(set(compose["services"]), {"aeserve", "prometheus", "grafana", "traffic"})
        for svc in compose["services"].values():
            for vol in svc.get("volumes", []):
                src = vol.split(":")[0]
                if src.startswith("."):
                    self.assertTrue(os.path.exists(os.path.join(os.path.dirname(path), src)), src)
        prom = yaml.safe_load(open(os.path.join(ROOT, "deploy", "prometheus", "prometheus.yml")))
        self.assertEqual(prom["scrape_configs"][0]["static_configs"][0]["targets"], ["aeserve:9464"])
        self.assertIn("aectl --server aeserve:50051 stream", compose["services"]["traffic"]["command"][0])
        for demo in re.findall(r"/usr/share/aeserve/demo/(\S+)", open(path).read()):
            self.assertTrue(os.path.exists(os.path.join(ROOT, "deploy", "demo", demo.strip('"]'))), demo)


if __name__ == "__main__":
    unittest.main()
