import AWSCore
import FoundationEssentials
@preconcurrency import Glibc
import TestSupport
import Testing
import Worker

/// The execution environment zip: fetched once, unpacked safely, the command run from inside it.
@Suite(.enabled(if: TestEnvironment.canRun(.moto)), .timeLimit(.minutes(3)))
struct EnvironmentArchiveTests {
    @Test func theCommandRunsFromTheUnpackedEnvironment() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            // Mode 0644 on purpose: files get their executable bits when unpacked.
            try await h.makeZip(
                dir + "/env.zip",
                files: [
                    (
                        "tool/bin/analyse.sh",
                        "#!/bin/sh\n. ./lib/settings\nprintf '%s:' \"$GREETING\" > \"$1.res\"\ncat \"$1\" >> \"$1.res\"\necho \"$1.res\"\n",
                        0o644
                    ),
                    ("tool/lib/settings", "GREETING=hello\n", 0o644),
                ])
            try await h.uploadFile(bucket: h.inputBucket, key: "env/env.zip", path: dir + "/env.zip")
            try await h.upload("in/x.txt", "data")
            try await h.send(["in/x.txt"])
            let params = h.parameters(
                [
                    "environmentBucket": h.inputBucket, "environmentZip": "env/env.zip",
                    "environmentPrefix": "tool",
                ], program: "bin/analyse.sh")
            let worker = try h.startWorker(name: "w", parameters: params)
            #expect(await worker.wait(timeout: 60) == .exited(0), "\(h.log("w"))")
            #expect(try await h.output("in/x.txt.res") == "hello:data")
        }
    }

    @Test(arguments: ["zip-slip", "symlink", "corrupt"])
    func escapingArchivesAreRefusedAtStartUp(kind: String) async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            if kind == "zip-slip" {
                try await h.makeZip(dir + "/env.zip", files: [("../../escaped.sh", "#!/bin/sh\n", 0o755)])
            } else if kind == "corrupt" {
                LocalFile.write(dir + "/env.zip", Array("PK\u{03}\u{04} this is not really a zip archive".utf8))
            } else {
                try await h.makeZip(
                    dir + "/env.zip", files: [("ok.sh", "#!/bin/sh\n", 0o755)], symlinks: [("etc", "/etc")])
            }
            try await h.uploadFile(bucket: h.inputBucket, key: "env.zip", path: dir + "/env.zip")
            let params = h.parameters(
                ["environmentBucket": h.inputBucket, "environmentZip": "env.zip"], program: "ok.sh")
            let worker = try h.startWorker(name: "w", parameters: params)
            // A configuration error no restart can fix: status 2, which systemd does not restart.
            #expect(await worker.wait(timeout: 60) == .exited(2))
            let log = h.log("w")
            let says = [
                "zip-slip": "escapes its folder", "symlink": "pointing outside", "corrupt": "not a zip archive",
            ][
                kind]!
            #expect(log.contains(says), "\(log)")
            #expect(!fileExists(dir + "/escaped.sh"))
        }
    }
}
