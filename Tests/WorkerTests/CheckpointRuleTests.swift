import AWSCore
import AWSServices
import FoundationEssentials
@preconcurrency import Glibc
import Logging
import Testing
import TestSupport

@testable import Worker

/// The checkpoint rules on the in-memory store: what a command leaves that cannot be kept whole (a link, a FIFO, a
/// hard link) saves nothing and keeps the last whole checkpoint; so does a command that had to be killed; a
/// manifest naming a path out of the folder, or of another version of the input, is not restored; the generation
/// before is deleted by its manifest, never by a listing that would reach another input's checkpoint.
struct CheckpointRuleTests {
    let logger = Logger(label: "test")
    let input = S3URI(bucket: "in", key: "runs/a")

    func folder(_ dir: String, _ name: String) -> String {
        let path = dir + "/" + name
        mkdir(path, 0o700)
        return path
    }

    @Test func onlyWholeCheckpointsAreSavedAndRestored() async throws {
        try await withTemporaryDirectory { dir in
            let store = MemoryStore()
            let checkpoints = Checkpoints(store: store, bucket: "out", outputPrefix: "", inputBucket: "in")
            let scratch = dir + "/scratch"
            // Another input whose key starts with this one's: its checkpoint must survive this one's clean-up.
            store.add(S3URI(bucket: "out", key: "_checkpoints/runs/a/b/manifest.json"), "other")

            let first = folder(dir, "first")
            LocalFile.write(first + "/state", Array("one".utf8))
            #expect(
                await checkpoints.save(
                    input, etag: "\"e1\"", from: first, owner: nil, generation: "g1", killed: false, scratch: scratch,
                    logger: logger))
            #expect(store.text(S3URI(bucket: "out", key: "_checkpoints/runs/a/g1/state")) == "one")

            // A link, a FIFO, a hard link: nothing saved, the first checkpoint stays.
            for plant in ["link", "fifo", "hardlink"] {
                let bad = folder(dir, "bad-\(plant)")
                LocalFile.write(bad + "/state", Array("two".utf8))
                switch plant {
                case "link": symlink("/etc/hostname", bad + "/leak")
                case "fifo": mkfifo(bad + "/pipe", 0o600)
                default: link(bad + "/state", bad + "/again")
                }
                #expect(
                    !(await checkpoints.save(
                        input, etag: "\"e1\"", from: bad, owner: nil, generation: "g-\(plant)", killed: false,
                        scratch: scratch, logger: logger)), "\(plant)")
            }
            // Killed after its grace: its state may be half written.
            let killed = folder(dir, "killed")
            LocalFile.write(killed + "/state", Array("half".utf8))
            #expect(
                !(await checkpoints.save(
                    input, etag: "\"e1\"", from: killed, owner: nil, generation: "g-killed", killed: true,
                    scratch: scratch, logger: logger)))
            #expect(store.keys(in: "out").filter { $0.contains("/g-") }.isEmpty)

            let back = folder(dir, "back")
            #expect(
                await checkpoints.restore(input, etag: "\"e1\"", into: back, scratch: scratch, logger: logger)
                    == .restored(files: 1))
            #expect(LocalFile.readText(back + "/state") == "one")
            // Without an ETag nothing says it is this version: not restored.
            #expect(
                await checkpoints.restore(
                    input, etag: nil, into: folder(dir, "unknown"), scratch: scratch, logger: logger)
                    == .none)
            // A refusal reading it is no checkpoint (a wait would put the message back forever); a 5xx is a wait.
            store.refuse(
                "out/_checkpoints/runs/a/manifest.json",
                with: AWSError(kind: .service, service: "s3", httpStatus: 403, code: "AccessDenied", message: "no"))
            #expect(
                await checkpoints.restore(
                    input, etag: "\"e1\"", into: folder(dir, "denied"), scratch: scratch, logger: logger)
                    == .none)
            store.refuse(
                "out/_checkpoints/runs/a/manifest.json",
                with: AWSError(kind: .service, service: "s3", httpStatus: 503, code: "SlowDown", message: "slow"))
            guard
                case .notNow = await checkpoints.restore(
                    input, etag: "\"e1\"", into: folder(dir, "slow"), scratch: scratch, logger: logger)
            else {
                Issue.record("a 503 reading the checkpoint was not a wait")
                return
            }
            store.refuse("out/_checkpoints/runs/a/manifest.json", with: nil)
            // Another version of the input: not restored.
            let other = folder(dir, "other")
            #expect(
                await checkpoints.restore(input, etag: "\"e2\"", into: other, scratch: scratch, logger: logger)
                    == .none)
            #expect(LocalFile.listDirectory(other).isEmpty)

            // A newer save replaces the generation before, by its manifest.
            let second = folder(dir, "second")
            LocalFile.write(second + "/state", Array("newer".utf8))
            #expect(
                await checkpoints.save(
                    input, etag: "\"e1\"", from: second, owner: nil, generation: "g2", killed: false, scratch: scratch,
                    logger: logger))
            #expect(store.text(S3URI(bucket: "out", key: "_checkpoints/runs/a/g1/state")) == nil)
            // Done: removed, and the other input's checkpoint stays.
            await checkpoints.remove(input, scratch: scratch, logger: logger)
            #expect(store.keys(in: "out") == ["_checkpoints/runs/a/b/manifest.json"])
        }
    }

    @Test func aManifestNamingAPathOutOfTheFolderIsNotUsed() async throws {
        try await withTemporaryDirectory { dir in
            let store = MemoryStore()
            let checkpoints = Checkpoints(store: store, bucket: "out", outputPrefix: "", inputBucket: "in")
            for (generation, file) in [("g", "../../escape"), ("..", "state"), ("g", "/etc/x"), ("a/b", "state")] {
                let manifest = Checkpoints<MemoryStore>.Manifest(
                    generation: generation, files: [file], input: input.description, inputETag: "\"e\"",
                    outputPrefix: "")
                store.add(
                    S3URI(bucket: "out", key: "_checkpoints/runs/a/manifest.json"),
                    String(decoding: manifest.json, as: UTF8.self))
                let into = folder(dir, "into-\(UInt32.random(in: 0...UInt32.max))")
                #expect(
                    await checkpoints.restore(
                        input, etag: "\"e\"", into: into, scratch: dir + "/scratch", logger: logger) == .none,
                    "\(generation) \(file)")
                #expect(LocalFile.listDirectory(into).isEmpty)
            }
        }
    }
}
