#!/usr/bin/env python3
"""The scenario of scripts/scenario.sh (standard library only): the five ways planning data
breaks, injected into the running demo, and how flowplane detects or prevents each.

  scenario.py run STATE S     the quiet check for S seconds, then the five breakdowns
                              (docs/scenario.md); exit 1 if a target is missed
  scenario.py quiet STATE S   the quiet check only: watch the demo for S seconds, roll every
                              flow's workers out a third of the way in, and exit 1 if any alert
                              fired in Prometheus

STATE is the file `scripts/demo.sh --serve` writes (URLs of the simulators, NATS, Prometheus,
the demo's run directory). Every time printed is UTC; "detected" is when this script saw the
state change (Prometheus' alert API is polled every 2 s, it evaluates every 2 s).
"""

import datetime
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
# No __pycache__ left in the worktree for the helper imported below.
sys.dont_write_bytecode = True
_spec = importlib.util.spec_from_file_location("demo_helper", os.path.join(HERE, "demo-helper.py"))
demo_helper = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo_helper)

ORDERS = "order-history-to-forecasting"
INVENTORY = "inventory-events-to-forecasting"
RETURNS = "returns-events-to-forecasting"
FORECASTS = "forecasts-to-supplier-portal"
DELTAS = "forecast-deltas-to-erp-replenishment"
NEW_PLANT, NEW_LOCATION = "1050", "DE-BER-DC"
PLANNER = "planner-anna"
# The warehouse's events of the new plant after the first one.
BULK = 20


def load_state(path):
    state = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.rstrip("\n").partition("=")
            if key:
                state[key] = value
    return state


S = {}


def now():
    return time.time()


def hms(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%H:%M:%S") if t else "-"


def rfc3339(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def log(text):
    print("[scenario %s] %s" % (hms(now()), text), file=sys.stderr, flush=True)


def run(args, stdin=None, check=True):
    out = subprocess.run(args, input=stdin, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise RuntimeError("%s failed: %s" % (" ".join(args[:4]), out.stderr.strip()[-500:]))
    return out.stdout


def kubectl(*args, stdin=None, check=True):
    return run(["kubectl", "-n", S["NS"], *args], stdin=stdin, check=check)


def flow(name):
    return json.loads(kubectl("get", "integrationflow", name, "-o", "json"))


def condition(obj, kind):
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return c
    return {}


def say_condition(obj, kind):
    c = condition(obj, kind)
    return "%s=%s (%s)" % (kind, c.get("status", "?"), c.get("reason", ""))


def http(method, url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        text = r.read()
    return json.loads(text) if text.strip() else None


def prometheus(path, **params):
    url = S["PROMETHEUS_URL"] + path + ("?" + urllib.parse.urlencode(params) if params else "")
    return http("GET", url)["data"]


def alerts(name=None, flow_name=None, state=None):
    found = []
    for a in prometheus("/api/v1/alerts")["alerts"]:
        labels = a["labels"]
        if name and labels.get("alertname") != name:
            continue
        if flow_name and labels.get("flow") != flow_name:
            continue
        if state and a["state"] != state:
            continue
        found.append(a)
    return found


def query(expr):
    result = prometheus("/api/v1/query", query=expr)["result"]
    return float(result[0]["value"][1]) if result else None


def last_delivery(flow_name):
    """The freshness metric the alert rules read (the flow's progress record, via the workers)."""
    return query('max(flowplane_worker_last_success_timestamp_seconds{namespace="%s",flow="%s"})' % (S["NS"], flow_name))


def wait(what, timeout, probe, every=2):
    deadline = now() + timeout
    while True:
        value = probe()
        if value:
            return value
        if now() > deadline:
            raise TimeoutError("waited %ds for %s" % (timeout, what))
        time.sleep(every)


def flowplane(*args):
    return run([S["FLOWPLANE_BIN"], *args, "-n", S["NS"], "--nats-url", S["NATS_URL"]])


def dead_letters(flow_name, reason):
    out = flowplane("dlq", "list", "--flow", flow_name, "--reason", reason)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


class Breakdown:
    def __init__(self, number, title):
        self.number, self.title, self.lines, self.failures = number, title, [], []

    def at(self, what, t, text):
        self.lines.append("    %-14s %s  %s" % (what, hms(t), text))
        log("[%d] %s: %s" % (self.number, what, text))

    def note(self, what, text):
        self.lines.append("    %-14s %s" % (what, text))

    def target(self, ok, text):
        self.lines.append("    %-14s %s  %s" % ("target", "MET   " if ok else "FAILED", text))
        if not ok:
            self.failures.append(text)

    def report(self):
        return "[%d] %s\n%s" % (self.number, self.title, "\n".join(self.lines))


def pause(part, paused):
    path = os.path.join(S["DEMO_RUN_DIR"], "paused", part)
    if paused:
        open(path, "w").close()
    elif os.path.exists(path):
        os.remove(path)


class AlertWatch(threading.Thread):
    """Polls Prometheus' alerts every 2 s for the whole scenario and notes when each alert
    started firing, so a detection is timed when it happened, not when a step looked."""

    def __init__(self):
        super().__init__(daemon=True)
        self.started = {}  # (alertname, flow) -> [times it went from not firing to firing]
        self.firing = set()

    def run(self):
        while True:
            try:
                current = {(a["labels"].get("alertname"), a["labels"].get("flow", "")) for a in alerts(state="firing")}
                for key in current - self.firing:
                    self.started.setdefault(key, []).append(now())
                self.firing = current
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(2)


WATCH = AlertWatch()


def firing_at(name, flow_name, since):
    """When `name` started firing for the flow at or after `since`, or None."""
    return next((t for t in WATCH.started.get((name, flow_name), []) if t >= since), None)


# --- 1. late inputs --------------------------------------------------------------------------
def inject_late_inputs(b):
    pause("orders", True)
    b.injected = now()
    b.at("injected", b.injected, "the ERP stops sending new order lines (its batch did not run)")


def finish_late_inputs(b):
    sla, warn = 120, 60
    warned = wait("FlowplaneContractFreshnessWarning on %s" % ORDERS, 240,
                  lambda: firing_at("FlowplaneContractFreshnessWarning", ORDERS, b.injected))
    last = last_delivery(ORDERS)
    b.at("last delivery", last, "the last order lines reached the forecasting platform")
    b.at("detected", warned, "FlowplaneContractFreshnessWarning firing in Prometheus: no sales-order-lines data for %ds "
         "(contract warnAfter %ds), %ds after the last delivery" % (warned - last, warn, warned - last))
    b.target(warned < last + sla, "a stale flow alerts within its SLA: the warning came %ds after the last delivery, "
             "before the %ds SLA ran out" % (warned - last, sla))
    stale = wait("FlowplaneFlowStale on %s" % ORDERS, 240, lambda: firing_at("FlowplaneFlowStale", ORDERS, b.injected))
    active = min(rfc3339(a["activeAt"]) for a in alerts("FlowplaneFlowStale", ORDERS))
    b.at("breached", stale, "FlowplaneFlowStale firing (critical): the flow's %ds SLA ran out at %s" % (sla, hms(last + sla)))
    b.target(active >= last + sla - 3, "FlowplaneFlowStale did not fire before the SLA ran out (pending from %s)" % hms(active))
    f = flow(ORDERS)
    b.note("condition", "%s, %s; status.sync.lastSuccessTime %s" % (
        say_condition(f, "Fresh"), say_condition(f, "Ready"), (f.get("status") or {}).get("sync", {}).get("lastSuccessTime")))
    b.note("operator", "nothing to repair in the flow: the workers keep polling from the cursor")
    pause("orders", False)
    resumed = now()
    b.at("recovery", resumed, "the ERP's batch runs again (new order lines)")
    wait("a new delivery of %s" % ORDERS, 120, lambda: (last_delivery(ORDERS) or 0) > resumed)
    cleared = wait("the freshness alerts of %s to resolve" % ORDERS, 120,
                   lambda: now() if not alerts(flow_name=ORDERS, name="FlowplaneFlowStale")
                   and not alerts(flow_name=ORDERS, name="FlowplaneContractFreshnessWarning") else None)
    f = wait("%s Fresh again" % ORDERS, 60,
             lambda: (lambda f: f if condition(f, "Fresh").get("status") == "True" else None)(flow(ORDERS)))
    b.at("resolved", cleared, "delivered again at %s, alerts resolved; %s" % (
        hms(last_delivery(ORDERS)), say_condition(f, "Fresh")))
    b.note("planner next", "hold the forecast run that reads order history until the flow is Fresh again (or "
           "flag it as built on data older than %ds); no records were lost, the cursor picks up where it stopped" % sla)


# --- 2. master-data mismatch -----------------------------------------------------------------
def inventory_event(site):
    return {
        "id": str(uuid.uuid4()),
        "site": site,
        "item": {"number": demo_helper.MATERIALS[0], "uom": "EA"},
        "stockCategory": "Unrestricted",
        "quantities": {"onHand": "40", "delta": "5"},
        "reason": "Receipt",
        "timestamp": demo_helper.now(),
    }


def publish_inventory(count, site):
    nats = demo_helper.Nats(S["NATS_URL"])
    for _ in range(count):
        nats.publish("wms.stock.adjustments." + site, inventory_event(site))
    nats.sock.close()


def unmapped_codes():
    return query('max(flowplane_operator_flow_unmapped_codes{namespace="%s",flow="%s",code_map="plant-to-location"})'
                 % (S["NS"], INVENTORY))


def inject_master_data(b):
    b.baseline = len(dead_letters(INVENTORY, "UnmappedCode"))
    publish_inventory(1, NEW_PLANT)
    b.injected = now()
    b.at("injected", b.injected, "the warehouse of a new ERP plant %s sends its first stock event; no code map "
         "knows the plant" % NEW_PLANT)


def writes_for(location):
    report = http("GET", S["FORECAST_URL"] + "/admin/received/inventory-positions")
    return sum(len(k["appliedVersions"]) + k["duplicates"] + k["stale"]
               for key, k in (report.get("keys") or {}).items() if location in key)


def finish_master_data(b):
    def drift():
        for d in (flow(INVENTORY).get("status") or {}).get("codeDrift") or []:
            if d["codeMap"] == "plant-to-location" and NEW_PLANT in d["unmapped"]:
                return now()
        return None

    detected = wait("status.codeDrift to list plant %s" % NEW_PLANT, 120, drift)
    letters = len(dead_letters(INVENTORY, "UnmappedCode")) - b.baseline
    b.at("detected", detected, "status.codeDrift of %s: plant-to-location unmapped [%s]; %d record dead-lettered "
         "(UnmappedCode) so far" % (INVENTORY, NEW_PLANT, letters))
    metric = wait("flowplane_operator_flow_unmapped_codes in Prometheus", 60, lambda: (unmapped_codes() or 0) > 0 and now())
    b.at("metric", metric, "flowplane_operator_flow_unmapped_codes{code_map=\"plant-to-location\"} = %d in Prometheus"
         % unmapped_codes())
    b.target(letters <= 1, "the unmapped location is reported before a bulk is dead-lettered (%d dead letter, the %d "
             "events of the plant's day still to come)" % (letters, BULK))
    fixed = now()
    patch = json.dumps({"data": {NEW_PLANT: NEW_LOCATION}})
    kubectl("patch", "configmap", "erp-plant-to-planning-location", "--type=merge", "-p", patch)
    redrive = "reason=UnmappedCode"
    kubectl("annotate", "integrationflow", INVENTORY, "--overwrite", "flowplane.io/redrive=" + redrive)
    b.at("operator", fixed, "platform engineer maps %s -> %s in the code map and annotates flowplane.io/redrive=%s"
         % (NEW_PLANT, NEW_LOCATION, redrive))

    def acknowledged():
        f = flow(INVENTORY)
        return now() if (f.get("status") or {}).get("operations", {}).get("redrive") == redrive else None

    waited = []

    def acknowledged_noting_wait():
        f = flow(INVENTORY)
        ready = condition(f, "Reconciling")
        if ready.get("reason") == "RedriveWaitsForRollout" and not waited:
            waited.append(ready.get("message", ""))
        return acknowledged()

    done = wait("the redrive to be acknowledged", 180, acknowledged_noting_wait)
    b.at("redriven", done, "the operator rolled the workers out with the new table, then redrove%s" % (
        " (status said: %s)" % waited[0] if waited else ""))
    publish_inventory(BULK, NEW_PLANT)
    b.at("bulk", now(), "the rest of the plant's day: %d more stock events from plant %s" % (BULK, NEW_PLANT))
    delivered = wait("all %d records of plant %s at the forecasting platform" % (BULK + 1, NEW_PLANT), 180,
                     lambda: writes_for(NEW_LOCATION) >= BULK + 1 and now())
    left = len(dead_letters(INVENTORY, "UnmappedCode")) - b.baseline
    writes = writes_for(NEW_LOCATION)
    b.at("recovery", delivered, "%d records of %s delivered (1 redriven + %d), %d left in the dead-letter stream"
         % (writes, NEW_LOCATION, BULK, left))
    b.target(writes == BULK + 1 and left == 0, "fix -> redrive -> delivered: %d of %d delivered exactly once, "
             "%d dead letters left" % (writes, BULK + 1, left))
    b.note("planner next", "check the new location %s in the planning hierarchy (its history starts today) and "
           "tell master data to add new plants to the code map before go-live" % NEW_LOCATION)


# --- 3. open loop ------------------------------------------------------------------------------
def install_planner():
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "planner"},
        "rules": [{"apiGroups": ["flowplane.io"], "resources": ["integrationflows"], "verbs": ["get", "patch"]}],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "planners"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "planner"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": PLANNER}],
    }
    for obj in (role, binding):
        kubectl("apply", "--server-side", "--field-manager=flowplane-scenario", "-f", "-", stdin=json.dumps(obj))


def as_planner(*args):
    return kubectl("--as", PLANNER, "--as-group", "system:authenticated", *args)


def open_loop(b):
    install_planner()
    # The chart's MutatingAdmissionPolicy (applied by scenario.sh) takes effect within seconds.
    wait("the decider stamped by the admission policy", 60, lambda: (
        as_planner("annotate", "integrationflow", DELTAS, "--overwrite", "flowplane.io/approve=no-such-review",
                   "flowplane.io/decided-by=someone-else"),
        (flow(DELTAS)["metadata"].get("annotations") or {}).get("flowplane.io/decided-by") == PLANNER)[1])
    before = {p["id"] for p in (flow(DELTAS).get("status") or {}).get("pendingApprovals") or []}
    http("POST", S["FORECAST_URL"] + "/admin/proposals", {"count": 20})
    b.injected = now()
    b.at("injected", b.injected, "a planning run publishes 20 replenishment proposals (4 change the ERP quantity "
         "by 10-12%: above the 5% that applies without review)")

    def parked():
        for p in (flow(DELTAS).get("status") or {}).get("pendingApprovals") or []:
            if p["id"] not in before:
                return p
        return None

    review = wait("a new review in status.pendingApprovals", 120, parked)
    b.at("detected", now(), "parked for review, not applied: status.pendingApprovals id %s, key %s, delta %.1f%%"
         % (review["id"], review["key"], review["deltaPercent"]))
    erp_before = erp_has(review["key"])
    b.target(not erp_before, "the parked delta is not in the ERP before a planner approves it")
    as_planner("annotate", "integrationflow", DELTAS, "--overwrite", "flowplane.io/approve=" + review["id"])
    stamped = (flow(DELTAS)["metadata"].get("annotations") or {}).get("flowplane.io/decided-by")
    b.at("operator", now(), "%s approves (kubectl --as %s annotate ... flowplane.io/approve=%s); the admission "
         "policy stamped flowplane.io/decided-by=%s" % (PLANNER, PLANNER, review["id"], stamped))
    applied = wait("the approved proposal in the ERP simulator", 120, lambda: erp_has(review["key"]) and now())

    def audited():
        out = flowplane("review", "list", "--routes", "--flow", DELTAS)
        for line in out.splitlines():
            record = json.loads(line)
            if record.get("id") == review["id"] and record.get("route") == "approved":
                return record
        return None

    record = wait("the decision audit record", 60, audited)
    b.at("recovery", applied, "applied in the ERP simulator (PurchaseReqnItem %s); audit: route %s, decidedBy %s"
         % (review["key"], record.get("route"), record.get("decidedBy")))
    routes = wait("status.routes to count the approval", 60,
                  lambda: (lambda r: r if r.get("approved", 0) >= 1 else None)((flow(DELTAS).get("status") or {}).get("routes") or {}))
    b.note("condition", "status.routes %s" % json.dumps(routes, sort_keys=True))
    b.target(record.get("decidedBy") == PLANNER, "parked, approved by a named user (%s), applied in the ERP"
             % record.get("decidedBy"))
    b.note("planner next", "work the remaining reviews before they time out (approval.reviewTimeout, then "
           "onTimeout); `flowplane review list --routes` answers who changed which order and when")


def erp_has(key):
    report = http("GET", S["ERP_URL"] + "/admin/received/PurchaseReqnItem")
    for k, v in (report.get("keys") or {}).items():
        if key in k or (isinstance(v.get("value"), dict) and v["value"].get("proposalId") == key):
            return True
    return False


# --- 4. failures found late --------------------------------------------------------------------
def inject_target_outage(b):
    http("POST", S["FORECAST_URL"] + "/admin/faults/returns", {"status": 503})
    b.injected = now()
    b.at("injected", b.injected, "the forecasting platform's returns endpoint answers 503 (outage)")


def finish_target_outage(b):
    sla = 180
    detected = wait("FlowplaneFlowFailing on %s" % RETURNS, 240,
                    lambda: firing_at("FlowplaneFlowFailing", RETURNS, b.injected))
    last = last_delivery(RETURNS)
    b.at("last delivery", last, "the last returns reached the forecasting platform")
    b.at("detected", detected, "FlowplaneFlowFailing firing in Prometheus (workers retry, deliver nothing), %ds "
         "after the last delivery" % (detected - last))
    stale = alerts("FlowplaneFlowStale", RETURNS, "firing")
    b.target(detected < last + sla and not stale, "the target outage alerts before the %ds freshness SLA is breached "
             "(at %s)" % (sla, hms(last + sla)))
    f = flow(RETURNS)
    sync = (f.get("status") or {}).get("sync") or {}
    b.note("condition", "%s, %s; lag %s, status.sync.blocked %s" % (
        say_condition(f, "Fresh"), say_condition(f, "Ready"), sync.get("lag"), sync.get("blocked")))
    b.note("operator", "the workers NAK with backoff and keep the records in the queue; no record is lost")
    http("DELETE", S["FORECAST_URL"] + "/admin/faults/returns")
    recovered = now()
    b.at("recovery", recovered, "the endpoint answers again")
    wait("a new delivery of %s" % RETURNS, 180, lambda: (last_delivery(RETURNS) or 0) > recovered)
    exhausted = len(dead_letters(RETURNS, "MaxDeliveries"))
    if exhausted:
        kubectl("annotate", "integrationflow", RETURNS, "--overwrite", "flowplane.io/redrive=reason=MaxDeliveries")
        wait("the MaxDeliveries redrive", 120, lambda: len(dead_letters(RETURNS, "MaxDeliveries")) == 0)
    cleared = wait("FlowplaneFlowFailing to resolve", 180, lambda: not alerts("FlowplaneFlowFailing", RETURNS) and now())
    b.at("resolved", cleared, "delivering again at %s; %d records had used up their deliveries and were redriven"
         % (hms(last_delivery(RETURNS)), exhausted))
    b.note("planner next", "nothing yet: the alert came while the returns data was still within its SLA; if it "
           "had run out, discount returns in this week's forecast and re-run it once the flow is Fresh")


# --- 5. uncontrolled interface change ------------------------------------------------------------
def template_of(flow_name):
    d = json.loads(kubectl("get", "deployment", flow_name + "-worker", "-o", "json"))
    return d["spec"]["template"]["metadata"]["annotations"].get("flowplane.io/config-hash")


def interface_change(b):
    good = json.loads(kubectl("get", "datacontract", "forecasts", "-o", "json"))
    version = (flow(FORECASTS).get("status") or {}).get("contractVersion")
    template = template_of(FORECASTS)
    breaking = json.loads(json.dumps(good))
    breaking["spec"]["version"] = "2.2.0"
    for field in breaking["spec"]["schema"]["fields"]:
        if field["name"] == "forecastQuantity":
            field["type"] = "Int"
            for key in ("precision", "scale"):
                field.pop(key, None)
    for key in ("status",):
        breaking.pop(key, None)
    breaking["metadata"] = {"name": "forecasts", "namespace": S["NS"]}
    kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=flowplane-demo", "-f", "-",
            stdin=json.dumps(breaking))
    b.injected = now()
    b.at("injected", b.injected, "the forecasts contract is published as 2.2.0 with forecastQuantity changed from "
         "Decimal to Int (a breaking change under compatibility Full)")

    def refused():
        dc = json.loads(kubectl("get", "datacontract", "forecasts", "-o", "json"))
        c = condition(dc, "Compatible")
        return (now(), dc, c) if c.get("status") == "False" else None

    detected, dc, c = wait("the DataContract's Compatible=False", 60, refused)
    breaks = (dc.get("status") or {}).get("breaks") or []
    b.at("detected", detected, "DataContract forecasts Compatible=False (%s): %s" % (
        c.get("reason"), "; ".join(str(x) for x in breaks)[:200] or c.get("message", "")[:200]))
    f = wait("the flow's ContractCompatible=False", 60,
             lambda: (lambda f: f if condition(f, "ContractCompatible").get("status") == "False" else None)(flow(FORECASTS)))
    kept = (f.get("status") or {}).get("contractVersion")
    b.note("condition", "%s: %s; contractVersion %s" % (
        FORECASTS, say_condition(f, "ContractCompatible"), kept))
    same = template_of(FORECASTS) == template
    b.target(kept == version and same, "blocked, workers stay on the last good version %s (worker template "
             "unchanged: %s)" % (kept, same))
    b.note("operator", "refused the version, kept the workers' configuration (no rollout)")
    good["metadata"] = {"name": "forecasts", "namespace": S["NS"]}
    good.pop("status", None)
    kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=flowplane-demo", "-f", "-",
            stdin=json.dumps(good))
    reverted = now()
    b.at("recovery", reverted, "the contract's owner reverts to %s (git revert)" % good["spec"]["version"])
    wait("ContractCompatible=True again", 60,
         lambda: condition(flow(FORECASTS), "ContractCompatible").get("status") == "True")
    b.at("resolved", now(), "%s: %s" % (FORECASTS, say_condition(flow(FORECASTS), "ContractCompatible")))
    b.note("planner next", "nothing: suppliers kept getting forecasts in the agreed shape; the change goes "
           "through as a new major version (3.0.0) that consumers opt into")


def settle(_b):
    """Waits until every flow's Deployment has rolled out and the flows 1 and 4 watch deliver."""
    def rolled_out():
        for d in json.loads(kubectl("get", "deployments", "-o", "json"))["items"]:
            spec, st = d["spec"], d.get("status") or {}
            want = spec.get("replicas", 1)
            if (st.get("observedGeneration", 0) < d["metadata"]["generation"] or st.get("updatedReplicas", 0) != want
                    or st.get("readyReplicas", 0) != want or st.get("replicas", 0) != want):
                return False
        return True

    wait("every flow's workers rolled out", 180, rolled_out)
    since = now()
    for name in (ORDERS, RETURNS):
        wait("a delivery of %s after the rollout" % name, 120, lambda: (last_delivery(name) or 0) > since)


def scenario(quiet_seconds):
    if quiet(quiet_seconds) != 0:
        return 1
    started = now()
    WATCH.start()
    b1 = Breakdown(1, "late inputs: the ERP's order-history batch stops (%s, SLA 2 min)" % ORDERS)
    b2 = Breakdown(2, "master-data mismatch: a plant no code map knows (%s)" % INVENTORY)
    b3 = Breakdown(3, "open loop: a forecast delta above the review threshold (%s)" % DELTAS)
    b4 = Breakdown(4, "failures found late: the target's returns endpoint goes down (%s, SLA 3 min)" % RETURNS)
    b5 = Breakdown(5, "uncontrolled interface change: a breaking contract version (%s)" % FORECASTS)
    # The code map fixed in 2 is shared by the order-history and returns flows too: their
    # workers roll out with it, so 1 and 4 start once that rollout is over (a worker replaced
    # while a flow is stale restarts its alert's `for`).
    steps = [
        (b2, inject_master_data), (b5, interface_change), (b3, open_loop), (b2, finish_master_data),
        (b1, settle), (b1, inject_late_inputs), (b4, inject_target_outage),
        (b1, finish_late_inputs), (b4, finish_target_outage),
    ]
    for b, step in steps:
        try:
            step(b)
        except (RuntimeError, TimeoutError, OSError, KeyError, ValueError) as e:
            b.failures.append("%s: %s" % (step.__name__, e))
            b.lines.append("    %-14s %s  %s" % ("ERROR", hms(now()), e))
            log("[%d] %s failed: %s" % (b.number, step.__name__, e))
    pause("orders", False)
    print("\nflowplane scenario: five breakdowns injected into the running demo (times UTC, started %s, %ds)\n"
          % (hms(started), now() - started))
    failed = []
    for b in (b1, b2, b3, b4, b5):
        print(b.report() + "\n")
        failed += ["[%d] %s" % (b.number, f) for f in b.failures]
    if failed:
        print("scenario FAILED:\n  " + "\n  ".join(failed))
        return 1
    print("scenario passed: every target met")
    return 0


def quiet(seconds):
    started = now()
    groups = prometheus("/api/v1/rules")["groups"]
    ours = [g for g in groups if g["name"].startswith("flowplane-%s-" % S["NS"])]
    targets = prometheus("/api/v1/targets")["activeTargets"]
    up = sum(1 for t in targets if t["health"] == "up")
    log("quiet check for %ds: %d rule groups of %s loaded (%d rules), %d of %d targets up" % (
        seconds, len(ours), S["NS"], sum(len(g["rules"]) for g in ours), up, len(targets)))
    if len(ours) < 5:
        print("quiet check FAILED: Prometheus has %d of the 5 flows' rule groups" % len(ours))
        return 1
    flows = kubectl("get", "integrationflows", "-o", "jsonpath={.items[*].metadata.name}").split()
    rollout_at, rolled, seen, stamp = started + seconds / 3, None, {}, None
    while now() < started + seconds:
        if rolled is None and now() >= rollout_at:
            stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            for name in flows:
                kubectl("annotate", "integrationflow", name, "--overwrite", "flowplane.io/restart=" + stamp)
            rolled = now()
            log("rollout: every flow's workers restarted (flowplane.io/restart=%s)" % stamp)
        for a in alerts():
            key = (a["labels"].get("alertname"), a["labels"].get("flow", ""), a["state"])
            if key not in seen:
                seen[key] = now()
                log("%s %s %s since %s" % (a["state"], key[0], key[1], a.get("activeAt", "")[:19]))
        time.sleep(10)
    # The rollout happened: every worker Deployment carries the restart and finished rolling.
    for d in json.loads(kubectl("get", "deployments", "-o", "json"))["items"]:
        annotations = d["spec"]["template"]["metadata"].get("annotations") or {}
        st = d.get("status") or {}
        if annotations.get("flowplane.io/restarted-at") != stamp or st.get("updatedReplicas") != st.get("replicas"):
            print("quiet check FAILED: %s did not roll out (restarted-at %s, %s of %s updated)" % (
                d["metadata"]["name"], annotations.get("flowplane.io/restarted-at"), st.get("updatedReplicas"),
                st.get("replicas")))
            return 1
    # What fired at any evaluation in the window, not only when this script looked.
    window = int(now() - started) + 1
    fired = prometheus("/api/v1/query", query='max_over_time(ALERTS{alertstate="firing"}[%ds])' % window)["result"]
    pending = sorted({"%s %s" % (k[0], k[1]) for k in seen if k[2] == "pending"})
    print("\nquiet check: %ds of the demo (%s to %s UTC), every flow's workers rolled out at %s; Prometheus "
          "evaluated %d rules of %d flows every 2 s" % (window, hms(started), hms(now()), hms(rolled),
                                                         sum(len(g["rules"]) for g in ours), len(ours)))
    print("  pending at some point (not fired): %s" % (", ".join(pending) or "none"))
    if fired:
        for r in fired:
            print("  FIRED: %s %s" % (r["metric"].get("alertname"), r["metric"].get("flow", "")))
        print("quiet check FAILED: %d alerts fired" % len(fired))
        return 1
    print("quiet check passed: no alert fired")
    return 0


def main():
    command, args = sys.argv[1], sys.argv[2:]
    S.update(load_state(args[0]))
    if command == "run":
        sys.exit(scenario(int(args[1])))
    elif command == "quiet":
        sys.exit(quiet(int(args[1])))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
