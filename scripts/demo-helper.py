#!/usr/bin/env python3
"""Helpers of scripts/demo.sh (standard library only).

  worker-config DIR          stdin: {"configMap": <ConfigMap JSON>, "bindings": <ConnectorBindingList
                             JSON>, "secrets": <SecretList JSON>}. Writes DIR/worker.json (the
                             operator's worker.json with the mounted-Secret paths moved under
                             DIR/secrets) and each binding's Secret keys as files there, mode 0600,
                             as the pod's Secret volumes would. Prints nothing about the values.
  traffic NATS_URL ERP_URL FORECAST_URL [PAUSED_DIR]
                             plays the warehouse (WMS events on NATS), the ERP (new and changed
                             sales order lines) and the forecasting platform (5 more replenishment
                             proposals every 15 s) until killed; a file named proposals,
                             inventory, returns or orders in PAUSED_DIR holds that part back.
  loop FORECAST_URL ERP_URL PORTAL_URL
                             prints the loop's counts: proposals published (and the route each is
                             meant to take), applied in the ERP, escalated to and forecasts at the
                             supplier portal.
  received FORECAST_URL E..  prints "entity=records" for each entity the forecasting simulator got.
  check NS SINCE FORECAST_URL ERP_URL PORTAL_URL E..
                             exit 0 when every IntegrationFlow in NS (stdin: the list as JSON) is
                             Ready and Fresh with a delivery at or after SINCE (RFC 3339, UTC),
                             every entity received records, and the loop reached the ERP's
                             replenishment entity and the supplier portal; else print why.
  scraped PROMETHEUS_URL NS FLOW..
                             exit 0 when Prometheus' last scrape of the operator pod and of a
                             worker pod of every FLOW in NS succeeded (up == 1); else print which
                             are missing (--real-node: the pods at their pod IPs).
"""

import base64
import datetime
import json
import os
import random
import select
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

SECRETS_DIR = "/var/run/flowplane/secrets/"


def worker_config(out_dir):
    given = json.load(sys.stdin)
    config = json.loads(given["configMap"]["data"]["worker.json"])
    secret_of = {}
    for binding in given["bindings"]["items"]:
        spec = binding["spec"]
        name = binding["metadata"]["name"]
        secret_of[name] = {
            "auth": (spec.get("auth") or {}).get("secretRef", {}).get("name"),
            "ca": (spec.get("endpoint") or {}).get("caSecretRef", {}),
        }
    secrets = {s["metadata"]["name"]: s.get("data") or {} for s in given["secrets"]["items"]}
    local_secrets = os.path.join(out_dir, "secrets")

    def write_keys(directory, data, only=None):
        os.makedirs(directory, mode=0o700, exist_ok=True)
        for key, value in data.items():
            if only is not None and key != only:
                continue
            path = os.path.join(directory, key)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(base64.b64decode(value))

    def rewrite(node):
        if isinstance(node, dict):
            binding = node.get("binding")
            if isinstance(node.get("secretDir"), str) and binding in secret_of:
                local = os.path.join(local_secrets, binding)
                write_keys(local, secrets.get(secret_of[binding]["auth"], {}))
                node["secretDir"] = local
            if isinstance(node.get("caFile"), str) and binding in secret_of:
                ca = secret_of[binding]["ca"]
                local = os.path.join(local_secrets, binding + "-ca")
                write_keys(local, secrets.get(ca.get("name"), {}), only=ca.get("key"))
                node["caFile"] = node["caFile"].replace(SECRETS_DIR + binding + "-ca", local)
            for value in node.values():
                rewrite(value)
        elif isinstance(node, list):
            for value in node:
                rewrite(value)

    rewrite(config)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "worker.json"), "w") as f:
        json.dump(config, f, indent=2)


PLANTS = ["1010", "1020", "1030", "1040"]
MATERIALS = [
    "000000000010004711", "000000000010004712", "000000000010007310", "000000000010007311",
    "000000000020001001", "000000000020001002", "000000000030000420",
]


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Nats:
    """A minimal NATS publisher (text protocol; answers the server's PINGs)."""

    def __init__(self, url):
        host, port = url.split("://", 1)[-1].rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)))
        self.sock.recv(4096)  # INFO
        self.sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"name":"demo-wms"}\r\n')

    def publish(self, subject, payload):
        body = json.dumps(payload).encode()
        self.sock.sendall(b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(body), body))
        while select.select([self.sock], [], [], 0)[0]:
            data = self.sock.recv(4096)
            if not data:
                raise ConnectionError("NATS closed the connection")
            if b"PING" in data:
                self.sock.sendall(b"PONG\r\n")


def post_json(url, body):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    urllib.request.urlopen(request, timeout=5).read()


def traffic(nats_url, erp_url, forecast_url, paused_dir=None):
    nats = Nats(nats_url)
    rma = 0
    line = 100_000

    def paused(part):
        return paused_dir is not None and os.path.exists(os.path.join(paused_dir, part))

    while True:
        # A planning run every 15 s: five more replenishment proposals.
        if line % 15 == 0 and not paused("proposals"):
            try:
                post_json(forecast_url.rstrip("/") + "/admin/proposals", {"count": 5})
            except (urllib.error.URLError, OSError) as e:
                print("demo traffic: forecasting simulator: %s" % e, file=sys.stderr)
        for _ in range(0 if paused("inventory") else 5):
            nats.publish(
                "wms.stock.adjustments." + random.choice(PLANTS),
                {
                    "id": str(uuid.uuid4()),
                    "site": random.choice(PLANTS),
                    "item": {"number": random.choice(MATERIALS), "uom": "EA"},
                    "stockCategory": random.choice(["Unrestricted", "Unrestricted", "QualityInspection"]),
                    "quantities": {"onHand": str(random.randint(0, 500)), "delta": str(random.randint(-20, 20))},
                    "reason": random.choice(["Receipt", "Pick", "CycleCount", "Transfer"]),
                    "timestamp": now(),
                },
            )
        rma += 1
        nats.publish(
            # Paused: sent where no flow listens, so the connection still answers PINGs.
            "wms.returns.received" if not paused("returns") else "demo.paused",
            {
                "rma": "RMA-%08d" % rma,
                "line": 1,
                "item": {"number": random.choice(MATERIALS), "uom": "EA"},
                "site": random.choice(PLANTS),
                "quantity": str(random.randint(1, 5)),
                "reasonText": random.choice(["Damaged", "WrongItem", "NotNeeded", "Defective"]),
                "disposition": random.choice(["Restock", "Refurbish", "Scrap"]),
                "reference": {"salesOrder": str(1_000_000 + random.randint(0, 99))},
                "receivedAt": now(),
            },
        )
        # A new sales order line in the ERP: the order-history flow picks it up on its next poll.
        line += 1
        if paused("orders"):
            # The ERP's batch has not run: no new order lines.
            time.sleep(1)
            continue
        order = {
            "SalesOrder": str(2_000_000 + line // 10),
            "SalesOrderItem": str((line % 10 + 1) * 10),
            "Material": "MAT-%05d" % (line % 500),
            "Plant": random.choice(PLANTS),
            "RequestedQuantity": str(random.randint(1, 50)),
            "RequestedQuantityUnit": "EA",
            "NetAmount": "%d.%02d" % (random.randint(10, 999), random.randint(0, 99)),
            "TransactionCurrency": "EUR",
            "SalesOrderItemCategory": "TAN",
            "to_SalesOrder": {"SoldToParty": "C%06d" % random.randint(0, 96),
                              "CreationDate": datetime.date.today().isoformat()},
        }
        request = urllib.request.Request(
            erp_url.rstrip("/") + "/admin/upsert/A_SalesOrderItem",
            data=json.dumps(order).encode(),
            headers={"content-type": "application/json"},
        )
        try:
            urllib.request.urlopen(request, timeout=5).read()
        except (urllib.error.URLError, OSError) as e:
            print("demo traffic: ERP simulator: %s" % e, file=sys.stderr)
        time.sleep(1)


def received_counts(forecast_url, entities):
    counts = {}
    for entity in entities:
        try:
            with urllib.request.urlopen(forecast_url.rstrip("/") + "/admin/received/" + entity, timeout=5) as r:
                counts[entity] = json.load(r).get("records", 0)
        except (urllib.error.URLError, OSError, ValueError):
            counts[entity] = "?"
    return counts


def get_json(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.load(r)
    except (urllib.error.URLError, OSError, ValueError):
        return {}


def loop_counts(forecast_url, erp_url, portal_url):
    published = get_json(forecast_url.rstrip("/") + "/admin/proposals")
    erp = get_json(erp_url.rstrip("/") + "/admin/received/PurchaseReqnItem")
    exceptions = get_json(portal_url.rstrip("/") + "/admin/received/forecast-exceptions")
    forecasts = get_json(portal_url.rstrip("/") + "/admin/received/forecasts")
    return {
        "published": published,
        "erp": len(erp.get("keys") or {}),
        "escalated": len(exceptions.get("distinct") or []),
        "forecasts": len(forecasts.get("distinct") or []),
    }


def loop(forecast_url, erp_url, portal_url):
    c = loop_counts(forecast_url, erp_url, portal_url)
    p = c["published"]
    print("proposals published: %s (by the rules: apply %s, review %s, escalate %s, unmapped location %s)"
          % (p.get("total", "?"), p.get("apply", "?"), p.get("review", "?"), p.get("escalate", "?"), p.get("deadLetter", "?")))
    print("ERP simulator PurchaseReqnItem: %d   supplier portal: forecast-exceptions=%d  forecasts=%d"
          % (c["erp"], c["escalated"], c["forecasts"]))


def received(forecast_url, entities):
    counts = received_counts(forecast_url, entities)
    print("  ".join("%s=%s" % (e, c) for e, c in counts.items()))


def condition(flow, kind):
    for c in (flow.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return c
    return {}


def check(namespace, since, forecast_url, erp_url, portal_url, entities):
    flows = json.load(sys.stdin)["items"]
    problems = []
    if not flows:
        problems.append("no IntegrationFlow in %s yet" % namespace)
    for flow in flows:
        name = flow["metadata"]["name"]
        for kind in ("Ready", "Fresh"):
            c = condition(flow, kind)
            if c.get("status") != "True":
                problems.append("%s: %s=%s (%s: %s)" % (name, kind, c.get("status", "?"), c.get("reason", ""), c.get("message", "")))
        last = ((flow.get("status") or {}).get("sync") or {}).get("lastSuccessTime") or ""
        if last < since:
            problems.append("%s: no delivery reported since the demo started (last: %s)" % (name, last or "never"))
    for entity, count in received_counts(forecast_url, entities).items():
        if not isinstance(count, int) or count == 0:
            problems.append("the forecasting simulator has no %s records yet" % entity)
    c = loop_counts(forecast_url, erp_url, portal_url)
    for what in ("erp", "escalated", "forecasts"):
        if not c[what]:
            problems.append("the loop has not reached %s yet" % {"erp": "the ERP's PurchaseReqnItem",
                            "escalated": "the portal's forecast-exceptions", "forecasts": "the portal's forecasts"}[what])
    for p in problems:
        print("  waiting: " + p)
    sys.exit(1 if problems else 0)


def scraped(prometheus_url, namespace, flows):
    query = urllib.parse.quote('up{pod!=""} == 1')
    result = get_json(prometheus_url.rstrip("/") + "/api/v1/query?query=" + query)
    series = [r["metric"] for r in result.get("data", {}).get("result", [])]
    missing = ["flow %s's worker pods" % flow for flow in flows
               if not any(m.get("namespace") == namespace and m.get("service") == flow + "-worker"
                          for m in series)]
    if not any(m.get("component") == "operator" for m in series):
        missing.append("the operator pod")
    for what in missing:
        print("  waiting: Prometheus has not scraped %s yet" % what)
    sys.exit(1 if missing else 0)


def main():
    command, args = sys.argv[1], sys.argv[2:]
    if command == "worker-config":
        worker_config(args[0])
    elif command == "traffic":
        traffic(args[0], args[1], args[2], args[3] if len(args) > 3 else None)
    elif command == "loop":
        loop(args[0], args[1], args[2])
    elif command == "received":
        received(args[0], args[1:])
    elif command == "check":
        check(args[0], args[1], args[2], args[3], args[4], args[5:])
    elif command == "scraped":
        scraped(args[0], args[1], args[2:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
