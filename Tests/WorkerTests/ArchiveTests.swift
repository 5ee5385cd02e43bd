import AWSCore
import FoundationEssentials
@preconcurrency import Glibc
import TestSupport
import Testing
@testable import Worker

/// The environment archive, unpacked in-process: archives made by `zip`, Python's `zipfile` (stored, deflated,
/// zip64, with a data descriptor) and `tar`, and every kind of entry that must refuse the whole archive.
@Suite(.timeLimit(.minutes(2)))
struct ArchiveTests {
    static let environment = TestEnvironment.environment.filter {
        $0.key == "PATH" || $0.key.hasPrefix("PYENV") || $0.key == "HOME"
    }

    /// Runs a shell line in `dir`; fails the test when it fails.
    @discardableResult
    func sh(_ line: String, in dir: String) async throws -> String {
        let result = try await Scripts.run("/bin/sh", ["-c", line], environment: Self.environment, directory: dir)
        try #require(result.succeeded, "\(line): \(result.stderr)")
        return result.stdout
    }

    func python(_ script: String, in dir: String) async throws {
        LocalFile.write(dir + "/make.py", Array(script.utf8))
        try await sh("python3 make.py", in: dir)
    }

    /// Unpacks into a fresh folder; returns it, or the refusal's message.
    func unpack(_ archive: String, in dir: String, maxBytes: Int64 = 64 << 20) -> Result<
        String, EnvironmentArchive.Failure
    > {
        let target = dir + "/out-\(UInt32.random(in: 0...UInt32.max))"
        _ = mkdir(target, 0o755)
        do {
            try EnvironmentArchive.unpack(archive, into: target, maxBytes: maxBytes)
            return .success(target)
        } catch {
            return .failure(error)
        }
    }

    /// A small tree: an executable, a file deep down, an empty folder, a link inside, a long name.
    func makeTree(_ dir: String) async throws {
        try await sh(
            """
            mkdir -p tree/bin tree/lib/deep tree/empty
            printf '#!/bin/sh\\necho hi\\n' > tree/bin/run.sh && chmod 0755 tree/bin/run.sh
            printf 'settings\\n' > tree/lib/deep/a.txt && chmod 0644 tree/lib/deep/a.txt
            ln -s ../lib/deep/a.txt tree/bin/a-link
            printf 'long\\n' > "tree/lib/$(printf 'n%.0s' $(seq 1 150)).txt"
            """, in: dir)
    }

    func expectTree(_ target: String) {
        #expect(LocalFile.readText(target + "/bin/run.sh") == "#!/bin/sh\necho hi\n")
        #expect(access(target + "/bin/run.sh", X_OK) == 0)
        #expect(LocalFile.readText(target + "/lib/deep/a.txt") == "settings\n")
        #expect(LocalFile.readText(target + "/bin/a-link") == "settings\n", "the link inside was not kept")
        #expect(LocalFile.readText(target + "/lib/" + String(repeating: "n", count: 150) + ".txt") == "long\n")
        var st = stat()
        #expect(stat(target + "/empty", &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR)
    }

    @Test func zipMadeByZip() async throws {
        try await withTemporaryDirectory { dir in
            try RequiredTool.require("zip", package: "zip")
            try await makeTree(dir)
            try await sh("cd tree && zip -qry ../env.zip .", in: dir)
            expectTree(try unpack(dir + "/env.zip", in: dir).get())
        }
    }

    @Test func tarGzMadeByTar() async throws {
        try await withTemporaryDirectory { dir in
            try await makeTree(dir)
            try await sh("tar -czf env.tar.gz -C tree .", in: dir)
            expectTree(try unpack(dir + "/env.tar.gz", in: dir).get())
            // pax headers (a name past ustar's limits) too.
            try await sh("tar --format=pax -czf pax.tar.gz -C tree .", in: dir)
            expectTree(try unpack(dir + "/pax.tar.gz", in: dir).get())
        }
    }

    @Test func zipsMadeByPython() async throws {
        try await withTemporaryDirectory { dir in
            try await python(
                """
                import zipfile
                for name, method in (("stored.zip", zipfile.ZIP_STORED), ("deflated.zip", zipfile.ZIP_DEFLATED)):
                    with zipfile.ZipFile(name, "w", method) as z:
                        z.writestr("bin/run.sh", "#!/bin/sh\\necho hi\\n")
                        z.writestr("data/big.txt", "line\\n" * 100000)
                # zip64 records, forced on a small archive
                with zipfile.ZipFile("zip64.zip", "w", zipfile.ZIP_DEFLATED) as z:
                    with z.open("data/big.txt", "w", force_zip64=True) as f:
                        f.write(b"line\\n" * 100000)
                # an unseekable output: each entry is followed by a data descriptor
                import subprocess
                with open("descriptor.zip", "wb") as out:
                    cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=out)
                    with zipfile.ZipFile(cat.stdin, "w", zipfile.ZIP_DEFLATED) as z:
                        z.writestr("data/big.txt", "line\\n" * 100000)
                    cat.stdin.close()
                    cat.wait()
                """, in: dir)
            let bytes = LocalFile.read(dir + "/descriptor.zip")!
            #expect(bytes[6] & 0x08 != 0, "the data-descriptor flag is not set: the test archive is not what it says")
            for name in ["stored.zip", "deflated.zip", "zip64.zip", "descriptor.zip"] {
                let target = try unpack(dir + "/" + name, in: dir).get()
                #expect(
                    LocalFile.readText(target + "/data/big.txt") == String(repeating: "line\n", count: 100000),
                    "\(name)")
            }
        }
    }

    /// Each of these refuses the whole archive, and the refusal names the entry.
    @Test func archivesThatAreRefused() async throws {
        try await withTemporaryDirectory { dir in
            try await python(
                """
                import io, tarfile, zipfile
                def tar(name, *infos):
                    with tarfile.open(name, "w:gz") as t:
                        for info, data in infos:
                            t.addfile(info, io.BytesIO(data) if data is not None else None)
                def info(name, kind=tarfile.REGTYPE, link="", size=0):
                    i = tarfile.TarInfo(name); i.type = kind; i.linkname = link; i.size = size; i.mode = 0o644
                    return i
                tar("device.tar.gz", (info("dev/sda", tarfile.BLKTYPE), None))
                tar("chardev.tar.gz", (info("dev/null", tarfile.CHRTYPE), None))
                tar("fifo.tar.gz", (info("pipe", tarfile.FIFOTYPE), None))
                tar("hardlink.tar.gz", (info("a.txt", size=1), b"a"), (info("b.txt", tarfile.LNKTYPE, "a.txt"), None))
                tar("link-out.tar.gz", (info("etc", tarfile.SYMTYPE, "/etc"), None))
                tar("link-up.tar.gz", (info("a/up", tarfile.SYMTYPE, "../../x"), None))
                tar("slip.tar.gz", (info("../escaped.sh", size=1), b"x"))
                tar("through-link.tar.gz", (info("d", tarfile.SYMTYPE, "."), None), (info("d/x.txt", size=1), b"x"))
                # Each link alone stays inside; the second climbs out through the first on disk.
                tar("chained-links.tar.gz", (info("l", tarfile.SYMTYPE, "."), None),
                    (info("x", tarfile.SYMTYPE, "l/l/l/l/../../../../etc/passwd"), None))
                tar("link-loop.tar.gz", (info("a", tarfile.SYMTYPE, "b"), None), (info("b", tarfile.SYMTYPE, "a"), None))
                def zipped(name, *entries):
                    with zipfile.ZipFile(name, "w") as z:
                        for entry_name, data, mode in entries:
                            i = zipfile.ZipInfo(entry_name); i.external_attr = mode << 16; i.create_system = 3
                            z.writestr(i, data)
                zipped("zip-slip.zip", ("../../escaped.sh", "x", 0o100755))
                zipped("zip-absolute.zip", ("/tmp/abs.sh", "x", 0o100755))
                zipped("zip-link-out.zip", ("etc", "/etc", 0o120777))
                zipped("zip-fifo.zip", ("pipe", "", 0o010644))
                zipped("zip-twice.zip", ("a.txt", "1", 0o100644), ("a.txt", "2", 0o100644))
                zipped("zip-through-link.zip", ("d", ".", 0o120777), ("d/x.txt", "x", 0o100644))
                zipped("zip-chained-links.zip", ("l", ".", 0o120777), ("x", "l/l/../../etc", 0o120777))
                # Deflated: 3 MiB of zeros in a few kilobytes.
                with zipfile.ZipFile("zip-bomb.zip", "w", zipfile.ZIP_DEFLATED) as z:
                    z.writestr("zeros", b"\\0" * (3 << 20))
                open("not-an-archive.zip", "wb").write(b"PK\\x03\\x04 this is not really a zip archive")
                open("plain.txt", "wb").write(b"hello")
                """, in: dir)
            let refusals: [(String, String)] = [
                ("device.tar.gz", "'dev/sda' is a device node"), ("chardev.tar.gz", "'dev/null' is a device node"),
                ("fifo.tar.gz", "'pipe' is a FIFO"), ("hardlink.tar.gz", "'b.txt' is a hard link"),
                ("link-out.tar.gz", "'etc' is a link pointing outside"),
                ("link-up.tar.gz", "'a/up' is a link pointing outside"),
                ("slip.tar.gz", "'../escaped.sh' escapes its folder"),
                ("through-link.tar.gz", "'d/x.txt' leads through a link"),
                ("zip-slip.zip", "escapes its folder"), ("zip-absolute.zip", "'/tmp/abs.sh' is an absolute path"),
                ("zip-link-out.zip", "'etc' is a link pointing outside"), ("zip-fifo.zip", "'pipe' is a FIFO"),
                ("zip-twice.zip", "'a.txt' appears twice"), ("not-an-archive.zip", "not a zip archive"),
                ("chained-links.tar.gz", "'x' is a link that leads outside the archive through another link"),
                ("link-loop.tar.gz", "in a loop of links"),
                ("zip-through-link.zip", "'d/x.txt' leads through a link"),
                ("zip-chained-links.zip", "'x' is a link that leads outside the archive through another link"),
                ("plain.txt", "neither a zip nor a gzip'd tar"),
            ]
            for (name, says) in refusals {
                switch unpack(dir + "/" + name, in: dir) {
                case .success: Issue.record("\(name) was unpacked")
                case .failure(let failure): #expect(failure.message.contains(says), "\(name): \(failure.message)")
                }
            }
            switch unpack(dir + "/zip-bomb.zip", in: dir, maxBytes: 1 << 20) {
            case .success: Issue.record("the archive over the cap was unpacked")
            case .failure(let failure): #expect(failure.message.contains("more than 1 MiB"), "\(failure.message)")
            }
            #expect(!fileExists(dir + "/../escaped.sh") && !fileExists("/tmp/abs.sh"))
            #expect(LocalFile.size(dir + "/zip-bomb.zip").map { $0 < 100 << 10 } == true, "the bomb is not deflated")
        }
    }

    /// Corrupt headers are refused with a reason, never a crash: sizes and offsets past any file (zip64), an end
    /// record in a file too short for one, pax records whose length points before their own text, and a negative
    /// pax size; then a few hundred archives damaged at random (a byte changed, or cut short).
    @Test func damagedArchivesAreRefusedNotACrash() async throws {
        try await withTemporaryDirectory { dir in
            try RequiredTool.require("zip", package: "zip")
            try await makeTree(dir)
            try await sh("tar -czf good.tar.gz -C tree . && (cd tree && zip -qry ../good.zip .)", in: dir)
            try await python(
                """
                import io, struct, tarfile, zipfile
                open("short.zip", "wb").write(b"PK\\x05\\x06")
                # A zip64 end record whose sizes and offsets are near 2^64.
                eocd64 = struct.pack("<IQHHIIQQQQ", 0x06064b50, 44, 45, 45, 0, 0, 1, 1, 2**64 - 2, 2**63 + 5)
                locator = struct.pack("<IIQI", 0x07064b50, 0, 0, 1)
                eocd = struct.pack("<IHHHHIIH", 0x06054b50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
                open("zip64-huge.zip", "wb").write(eocd64 + locator + eocd)
                def tar(name, pax):
                    with tarfile.open(name, "w:gz", format=tarfile.PAX_FORMAT) as t:
                        i = tarfile.TarInfo("f.txt"); i.size = 1; i.pax_headers = pax
                        t.addfile(i, io.BytesIO(b"x"))
                tar("pax-negative.tar.gz", {"size": "-5"})
                # A pax record "1 x\\n" (its length covers less than its own text), written by hand.
                data = b"1 x\\n"
                h = tarfile.TarInfo("././@PaxHeader"); h.type = tarfile.XHDTYPE; h.size = len(data)
                f = tarfile.TarInfo("f.txt"); f.size = 1
                with tarfile.open("pax-short.tar.gz", "w:gz", format=tarfile.USTAR_FORMAT) as t:
                    t.addfile(h, io.BytesIO(data)); t.addfile(f, io.BytesIO(b"x"))
                """, in: dir)
            for name in ["short.zip", "zip64-huge.zip", "pax-negative.tar.gz"] {
                if case .success = unpack(dir + "/" + name, in: dir) { Issue.record("\(name) was unpacked") }
            }
            // The short record is skipped as unreadable, and the archive is still unpacked or refused: no trap.
            _ = unpack(dir + "/pax-short.tar.gz", in: dir)

            // Seeded, and the seed printed: a crash names the damage that caused it.
            let seed = UInt64.random(in: 1...UInt64.max)
            print("damagedArchivesAreRefusedNotACrash: seed \(seed)")
            var generator = SplitMix(seed: seed)
            for name in ["good.zip", "good.tar.gz"] {
                let good = try #require(LocalFile.read(dir + "/" + name))
                #expect(throws: Never.self) { try unpack(dir + "/" + name, in: dir).get() }
                for round in 0..<150 {
                    var bad = good
                    if round % 3 == 0 {
                        bad = Array(bad.prefix(Int.random(in: 0..<bad.count, using: &generator)))
                    } else {
                        for _ in 0..<(1 + round % 4) {
                            bad[Int.random(in: 0..<bad.count, using: &generator)] = UInt8.random(
                                in: 0...255, using: &generator)
                        }
                    }
                    let path = dir + "/damaged-" + name
                    LocalFile.write(path, bad)
                    _ = unpack(path, in: dir)  // refused or (a harmless byte) unpacked: either way, no crash
                }
            }
        }
    }
}
