// Checks Kubernetes manifests offline (make k8s-check):
//
//   node validate.mjs FILE...        the documents of FILE ("-": stdin),
//                                    normally deploy/k8s rendered by
//                                    kubectl kustomize
//   node validate.mjs --self-test FILE...
//                                    breaks the documents in known ways
//                                    and fails unless every break is caught
//
// Every document is validated against the Kubernetes API schema of its
// kind from the npm package kubernetes-models, strictly: a field that the
// schema does not know is an error, as the API server's field validation
// makes it (the package's own validators let unknown fields pass, so the
// document is watched while they run, and whatever they never read is
// unknown).  Then the references between documents: selectors match pod
// labels, volumes name ConfigMaps that exist, ports are declared, and
// what deploy/k8s promises of its pods (probes, preStop, resources, a
// non-root user).

import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";

// ------------------------------------------------------------- schemas

// A copy of value whose objects record which of their properties were
// read; a validator enumerating an object's keys (a map such as labels)
// reads them all.
function watch(value, path, watched) {
    if (value === null || typeof value !== "object") {
        return value;
    }

    const node = { path, read: new Set(), all: Array.isArray(value) };
    const copy = Array.isArray(value)
        ? value.map((v, i) => watch(v, `${path}/${i}`, watched))
        : Object.fromEntries(Object.entries(value).map(
            ([k, v]) => [k, watch(v, `${path}/${k}`, watched)]));

    node.keys = Object.keys(copy);
    watched.push(node);

    return new Proxy(copy, {
        get(target, key, receiver) {
            node.read.add(key);
            return Reflect.get(target, key, receiver);
        },
        has(target, key) {
            node.read.add(key);
            return Reflect.has(target, key);
        },
        ownKeys(target) {
            node.all = true;
            return Reflect.ownKeys(target);
        },
    });
}

async function model(doc) {
    const [group, version] = doc.apiVersion.includes("/")
        ? doc.apiVersion.split("/") : ["", doc.apiVersion];
    const mod = await import(
        `kubernetes-models/${group ? group + "/" : ""}${version}`);

    return mod[doc.kind];
}

async function schemaErrors(doc, where) {
    if (typeof doc?.apiVersion !== "string" || typeof doc?.kind !== "string") {
        return [`${where}: no apiVersion and kind`];
    }

    let Model;

    try {
        Model = await model(doc);
    } catch (e) {
        Model = undefined;
    }

    if (Model === undefined) {
        return [`${where}: ${doc.apiVersion} ${doc.kind} is no Kubernetes `
                + "API kind"];
    }

    const watched = [];
    const errors = [];

    try {
        Model.prototype.validate.call(watch(doc, "", watched));
    } catch (e) {
        for (const line of String(e.message).split("\n")) {
            errors.push(`${where}: ${line}`);
        }
    }

    const unknown = [];

    for (const node of watched) {
        for (const key of node.all ? [] : node.keys) {
            if (!node.read.has(key)) {
                unknown.push(`${node.path}/${key}`);
            }
        }
    }

    // what lies under an unknown field is not news
    for (const path of unknown) {
        if (!unknown.some((u) => path.startsWith(u + "/"))) {
            errors.push(`${where}: unknown field ${path}`);
        }
    }

    return errors;
}

// ---------------------------------------------------------- references

const workloadKinds = new Set(["StatefulSet", "Deployment", "DaemonSet"]);

function selects(selector, labels) {
    const want = selector?.matchLabels ?? selector ?? {};

    return Object.keys(want).length > 0
        && Object.entries(want).every(([k, v]) => labels?.[k] === v);
}

function referenceErrors(docs) {
    const errors = [];
    const named = (kind, name) =>
        docs.find((d) => d.kind === kind && d.metadata?.name === name);
    const workloads = docs.filter((d) => workloadKinds.has(d.kind));
    const podsOf = (selector) => workloads.filter(
        (w) => selects(selector, w.spec?.template?.metadata?.labels));

    for (const w of workloads) {
        const where = `${w.kind} ${w.metadata?.name}`;
        const pod = w.spec?.template?.spec ?? {};
        const labels = w.spec?.template?.metadata?.labels;

        if (!selects(w.spec?.selector, labels)) {
            errors.push(`${where}: the selector does not match the pod labels`);
        }

        for (const v of pod.volumes ?? []) {
            if (v.configMap && !named("ConfigMap", v.configMap.name)) {
                errors.push(`${where}: volume ${v.name} names ConfigMap `
                            + `${v.configMap.name}, which does not exist`);
            }
        }

        if (w.kind === "StatefulSet") {
            const svc = named("Service", w.spec.serviceName);

            if (svc?.spec?.clusterIP !== "None") {
                errors.push(`${where}: serviceName ${w.spec.serviceName} is `
                            + "no headless Service");
            }

            if (!(w.spec.volumeClaimTemplates ?? []).length) {
                errors.push(`${where}: no volumeClaimTemplates`);
            }
        }

        const nonRoot = pod.securityContext?.runAsNonRoot;
        const mounts = new Set((pod.volumes ?? []).map((v) => v.name)
            .concat((w.spec.volumeClaimTemplates ?? [])
                .map((c) => c.metadata?.name)));

        for (const c of pod.containers ?? []) {
            const at = `${where} container ${c.name}`;
            const ports = new Set((c.ports ?? []).map((p) => p.name));

            for (const probe of ["livenessProbe", "readinessProbe"]) {
                const port = c[probe]?.httpGet?.port;

                if (c[probe] === undefined) {
                    errors.push(`${at}: no ${probe}`);
                } else if (typeof port === "string" && !ports.has(port)) {
                    errors.push(`${at}: ${probe} port ${port} is not declared`);
                }
            }

            if (!c.lifecycle?.preStop) {
                errors.push(`${at}: no preStop hook`);
            }

            if (!c.resources?.requests?.memory
                || !c.resources?.limits?.memory) {
                errors.push(`${at}: no memory request and limit`);
            }

            if (!(c.securityContext?.runAsNonRoot ?? nonRoot)) {
                errors.push(`${at}: may run as root`);
            }

            for (const m of c.volumeMounts ?? []) {
                if (!mounts.has(m.name)) {
                    errors.push(`${at}: mounts ${m.name}, which is no volume`);
                }
            }
        }
    }

    for (const d of docs) {
        const where = `${d.kind} ${d.metadata?.name}`;

        if (d.kind === "Service" || d.kind === "PodDisruptionBudget") {
            const pods = podsOf(d.spec?.selector);

            if (pods.length === 0) {
                errors.push(`${where}: the selector matches no pods`);
            }

            for (const p of d.kind === "Service" ? d.spec.ports ?? [] : []) {
                const declared = pods.some((w) => w.spec.template.spec
                    .containers.some((c) => (c.ports ?? []).some(
                        (cp) => cp.name === p.targetPort
                                || cp.containerPort === p.targetPort)));

                if (!declared) {
                    errors.push(`${where}: targetPort ${p.targetPort} is `
                                + "declared by none of its pods");
                }
            }
        }
    }

    for (const kind of ["StatefulSet", "Deployment", "Service", "ConfigMap",
                        "PodDisruptionBudget"])
    {
        if (!docs.some((d) => d.kind === kind)) {
            errors.push(`no ${kind}`);
        }
    }

    return errors;
}

// --------------------------------------------------------------- main

async function check(docs, names) {
    const errors = [];

    for (const [i, doc] of docs.entries()) {
        errors.push(...await schemaErrors(doc, names[i]));
    }

    return errors.concat(referenceErrors(docs));
}

function load(files) {
    const docs = [];
    const names = [];

    for (const file of files) {
        const text = readFileSync(file === "-" ? 0 : file, "utf8");

        for (const d of parseAllDocuments(text)) {
            if (d.errors.length) {
                throw new Error(`${file}: ${d.errors[0].message}`);
            }

            const doc = d.toJS();

            if (doc !== null) {
                docs.push(doc);
                names.push(`${file}: ${doc.kind} ${doc.metadata?.name}`);
            }
        }
    }

    return { docs, names };
}

// Each break must make check() report at least one error.
const breaks = {
    "a misspelt field": (docs) => {
        const c = docs.find((d) => d.kind === "StatefulSet")
            .spec.template.spec.containers[0];
        c.livenesProbe = c.livenessProbe;
        delete c.livenessProbe;
    },
    "a string for an integer": (docs) => {
        docs.find((d) => d.kind === "StatefulSet").spec.replicas = "3";
    },
    "a value outside an enum": (docs) => {
        docs.find((d) => d.kind === "StatefulSet")
            .spec.podManagementPolicy = "AllAtOnce";
    },
    "an unknown kind": (docs) => {
        docs.find((d) => d.kind === "Service").kind = "Servce";
    },
    "a Service selecting no pod": (docs) => {
        docs.find((d) => d.kind === "Service")
            .spec.selector = { app: "nothing" };
    },
    "a volume of a missing ConfigMap": (docs) => {
        docs.find((d) => d.kind === "Deployment")
            .spec.template.spec.volumes.find((v) => v.configMap)
            .configMap.name = "missing";
    },
    "a StatefulSet without its headless Service": (docs) => {
        docs.find((d) => d.kind === "StatefulSet").spec.serviceName = "kv";
    },
    "a container without a memory limit": (docs) => {
        delete docs.find((d) => d.kind === "Deployment")
            .spec.template.spec.containers[0].resources.limits;
    },
    "a pod that may run as root": (docs) => {
        delete docs.find((d) => d.kind === "StatefulSet")
            .spec.template.spec.securityContext.runAsNonRoot;
    },
};

async function main(argv) {
    const selfTest = argv[0] === "--self-test";
    const files = selfTest ? argv.slice(1) : argv;
    let passed = 0;
    let failed = 0;

    if (files.length === 0) {
        console.error("usage: node validate.mjs [--self-test] FILE...");
        return 2;
    }

    const { docs, names } = load(files);

    if (!selfTest) {
        const errors = await check(docs, names);

        for (const n of names) {
            console.log(`ok - ${n}`);
        }

        for (const e of errors) {
            console.log(`not ok - ${e}`);
        }

        passed = errors.length ? 0 : docs.length;
        failed = errors.length;
    } else {
        for (const [what, breakIt] of Object.entries(breaks)) {
            const copy = structuredClone(docs);

            breakIt(copy);

            const errors = await check(copy, names);

            if (errors.length) {
                console.log(`ok - caught ${what}: ${errors[0]}`);
                passed++;
            } else {
                console.log(`not ok - ${what} went unnoticed`);
                failed++;
            }
        }
    }

    console.log(`${passed} passed, ${failed} failed`);

    return failed || passed === 0 ? 1 : 0;
}

process.exitCode = await main(process.argv.slice(2));
