// A throw-away CA and server certificates (with IP SANs) made with openssl at
// test time. Nothing here is committed; every run makes its own.
import { execFileSync } from "node:child_process";
import { writeFileSync, readFileSync } from "node:fs";
import { join } from "node:path";

function openssl(args) {
  execFileSync("openssl", args, { stdio: ["ignore", "ignore", "pipe"] });
}

export function makeCa(dir) {
  const key = join(dir, "ca.key");
  const cert = join(dir, "ca.pem");
  openssl([
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
    "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=chatgate e2e test CA",
    "-addext", "basicConstraints=critical,CA:TRUE",
    "-addext", "keyUsage=critical,keyCertSign,cRLSign",
  ]);
  return {
    certFile: cert,
    pem: readFileSync(cert, "utf8"),
    // A server certificate for one host name or IP address.
    leaf(name) {
      const base = join(dir, name.replace(/[^a-z0-9]/gi, "_"));
      const san = /^[0-9.]+$/.test(name) ? `IP:${name}` : `DNS:${name}`;
      const ext = `${base}.ext`;
      writeFileSync(ext, `subjectAltName=${san}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n`);
      openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", `${base}.key`, "-out", `${base}.csr`, "-subj", `/CN=${name}`]);
      openssl(["x509", "-req", "-in", `${base}.csr`, "-CA", cert, "-CAkey", key, "-CAcreateserial",
        "-out", `${base}.pem`, "-days", "2", "-extfile", ext]);
      return {
        certFile: `${base}.pem`,
        keyFile: `${base}.key`,
        cert: readFileSync(`${base}.pem`),
        key: readFileSync(`${base}.key`),
      };
    },
  };
}
