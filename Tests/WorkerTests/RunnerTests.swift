import AWSCore
@preconcurrency import Glibc
import TestSupport
import Testing
@testable import Worker

@Suite(.timeLimit(.minutes(2)))
struct RunnerTests {
    let runner = ProcessRunner()

    func run(_ script: String, in dir: String, timeout: Int? = nil) async throws -> ProcessOutcome {
        try await runner.run(
            argv: ["/bin/sh", "-c", script], environment: ["PATH": "/usr/bin:/bin"], directory: dir,
            stdoutPath: dir + "/out", stderrPath: dir + "/err", user: nil, timeout: timeout)
    }

    @Test func exitStatusesAndCapturedOutput() async throws {
        try await withTemporaryDirectory { dir in
            let o1 = try await run("echo hello; echo oops >&2; pwd", in: dir)
            #expect(o1 == .exited(0))
            #expect(LocalFile.readText(dir + "/out") == "hello\n\(dir)\n")
            #expect(LocalFile.readText(dir + "/err") == "oops\n")
            let o2 = try await run("exit 3", in: dir)
            #expect(o2 == .exited(3))
            let o3 = try await run("kill -9 $$", in: dir)
            #expect(o3 == .signalled(9))
        }
    }

    @Test func aTimeoutKillsTheWholeProcessGroup() async throws {
        try await withTemporaryDirectory { dir in
            let started = ContinuousClock.now
            // The grandchild would outlive a plain kill of the shell.
            let outcome = try await run("sleep 30 & echo $! > \(dir)/grandchild; wait", in: dir, timeout: 1)
            #expect(outcome == .timedOut)
            #expect(ContinuousClock.now - started < .seconds(10))
            let pid = Int32(LocalFile.readText(dir + "/grandchild")!.trimmingSpaces)!
            // Dead means gone, or a zombie waiting for a reaper (this sandbox's init may not reap at once). The kill
            // is delivered at once; its end is waited for under a generous deadline, not for a fixed time.
            func state() -> Substring? {
                LocalFile.readText("/proc/\(pid)/stat")?.split(separator: ")").last?.split(separator: " ").first
            }
            await eventually { state() == nil || state() == "Z" }
            #expect(
                state() == nil || state() == "Z", "the grandchild survived (state \(state().map(String.init) ?? "?"))")
        }
    }

    /// A command can empty its own process group (a child makes a group of its own, then the command joins it):
    /// a kill of the group alone would then find no one, and the command would run past its time limit forever.
    @Test func aCommandThatLeavesItsGroupStillMeetsItsTimeLimit() async throws {
        try await withTemporaryDirectory { dir in
            let script = """
                import os, time
                child = os.fork()
                if child == 0:
                    os.setpgid(0, 0)
                    time.sleep(6)

                    os._exit(0)
                time.sleep(0.2)
                os.setpgid(0, child)
                open("moved", "w").write(str(os.getpgid(0) == child))
                time.sleep(60)
                """
            LocalFile.write(dir + "/escape.py", Array(script.utf8))
            var quick = runner
            quick.killGrace = 0.5
            let started = ContinuousClock.now
            let outcome = try await quick.run(
                argv: ["/usr/bin/env", "python3", dir + "/escape.py"], environment: TestEnvironment.environment,
                directory: dir, stdoutPath: dir + "/out", stderrPath: dir + "/err", user: nil, timeout: 3)
            #expect(
                LocalFile.readText(dir + "/moved") == "True",
                "the command did not leave its group: \(LocalFile.readText(dir + "/err") ?? "")")
            #expect(outcome == .timedOut)
            #expect(ContinuousClock.now - started < .seconds(20))
        }
    }

    @Test func aStopRequestInterrupts() async throws {

        try await withTemporaryDirectory { dir in
            // Cancelling the task that waits for the command is how a stop's grace ends it.
            let waiting = Task { try await run("touch started; sleep 30", in: dir) }
            await eventually { fileExists(dir + "/started") }
            waiting.cancel()
            let outcome = try await waiting.value
            #expect(outcome == .interrupted)
        }
    }

    @Test func missingOrNonExecutableProgramsFailToStart() async throws {
        try await withTemporaryDirectory { dir in
            LocalFile.write(dir + "/script.sh", Array("#!/bin/sh\necho hi\n".utf8), mode: 0o644)
            for program in ["/nonexistent/program", dir + "/script.sh"] {
                await #expect(throws: SpawnError.self) {
                    _ = try await runner.run(
                        argv: [program], environment: [:], directory: dir, stdoutPath: dir + "/o",
                        stderrPath: dir + "/e", user: nil, timeout: nil)
                }
            }
            #expect(ProcessRunner.resolve("sh", in: dir, path: "/usr/bin:/bin") != nil)
            #expect(ProcessRunner.resolve("script.sh", in: dir, path: "") == nil)  // not executable
            #expect(ProcessRunner.resolve("./script.sh", in: dir, path: "") == dir + "/./script.sh")
        }
    }

    /// The child starts on the daemon's memory (clone with CLONE_VM) and must leave none of the daemon's state to the
    /// command: no blocked signals, SIGPIPE not ignored, no descriptor but 0-2; and the calling thread gets its own
    /// mask back.
    @Test func theCommandStartsWithCleanSignalsAndDescriptors() async throws {
        try await withTemporaryDirectory { dir in
            let oldPipe = signal(SIGPIPE, SIG_IGN)
            defer { signal(SIGPIPE, oldPipe) }
            let held = open(dir, O_RDONLY)  // not close-on-exec: the runner must close it anyway
            defer { close(held) }
            // No await between setting the mask and reading it back: the same thread throughout.
            var blocked = sigset_t()
            sigemptyset(&blocked)
            sigaddset(&blocked, SIGUSR2)
            var before = sigset_t()
            pthread_sigmask(SIG_BLOCK, &blocked, &before)
            // Programs run directly, not through a shell, which might reset its mask by itself.
            let status = try runner.start(
                argv: ["/bin/grep", "-E", "^Sig(Blk|Ign):", "/proc/self/status"],
                environment: [:], directory: dir, stdoutPath: dir + "/status",
                stderrPath: dir + "/err")
            var after = sigset_t()
            pthread_sigmask(SIG_SETMASK, &before, &after)
            // The runner blocks every signal around the clone: the thread must get exactly its own mask back.
            let changed = (1..<65).filter {
                sigismember(&after, $0) != (($0 == SIGUSR2) ? 1 : sigismember(&before, $0))
            }
            #expect(changed.isEmpty, "signals whose blocking changed: \(changed)")

            #expect(await status.wait(timeout: 10) == .exited(0))
            let lines = LocalFile.readText(dir + "/status")?.split(separator: "\n").map(String.init) ?? []
            #expect(lines.first == "SigBlk:\t0000000000000000", "\(lines)")
            // Bit 13 (SIGPIPE) set would mean the daemon's SIG_IGN leaked into the command.
            let ignored = lines.dropFirst().first.flatMap { UInt64($0.split(separator: "\t").last ?? "", radix: 16) }
            #expect(ignored.map { $0 & (1 << UInt64(SIGPIPE - 1)) == 0 } == true, "\(lines)")
            let fds = try runner.start(
                argv: ["/bin/ls", "/proc/self/fd"], environment: [:], directory: dir,
                stdoutPath: dir + "/fds", stderrPath: dir + "/err")
            #expect(await fds.wait(timeout: 10) == .exited(0))
            // 0, 1, 2, and the one `ls` opens to read the folder.
            let open = LocalFile.readText(dir + "/fds")?.split(separator: "\n") ?? []
            #expect(open.count == 4, "\(open)")
        }
    }

    @Test func theChildGetsOnlyTheGivenEnvironment() async throws {
        try await withTemporaryDirectory { dir in
            _ = try await runner.run(
                argv: ["/usr/bin/env"], environment: ["ONLY": "this"], directory: dir,
                stdoutPath: dir + "/out", stderrPath: dir + "/err", user: nil, timeout: nil)
            #expect(LocalFile.readText(dir + "/out") == "ONLY=this\n")
        }
    }

    /// The output rule: a name is resolved from the command's working directory, and must lead to a regular file in
    /// the task's data folder or the environment folder, without a link; it is opened once, here.
    @Test func outputJudging() async throws {
        try await withTemporaryDirectory { dir in
            let base = LocalFile.realPath(dir)!
            let task = base + "/task", env = base + "/env"
            _ = mkdir(task, 0o700)
            _ = mkdir(env, 0o700)
            LocalFile.write(task + "/result.txt", Array("r".utf8))
            LocalFile.write(env + "/made-in-env.csv", Array("e".utf8))
            _ = mkdir(task + "/sub", 0o700)
            LocalFile.write(task + "/sub/deep.txt", Array("d".utf8))
            _ = mkfifo(task + "/fifo", 0o600)
            _ = symlink("/etc/shadow", task + "/shadow")
            _ = symlink(task + "/result.txt", task + "/inside-link")
            _ = symlink(task + "/sub", task + "/sublink")
            LocalFile.write(base + "/outside.txt", Array("o".utf8))
            let latin1: [UInt8] = Array("caf".utf8) + [0xE9] + Array(".txt".utf8)
            _ = LocalFile.write(String(decoding: Array(task.utf8), as: UTF8.self) + "/placeholder", [])
            let latinPath = Array(task.utf8) + [UInt8(ascii: "/")] + latin1 + [0]
            let fd = latinPath.withUnsafeBufferPointer { p in
                p.withMemoryRebound(to: CChar.self) { open($0.baseAddress!, O_WRONLY | O_CREAT, 0o600) }
            }
            close(fd)
            func judge(_ line: String?, cwd: String? = nil) -> OutputJudge.Verdict {
                let verdict = OutputJudge.judge(
                    line: line.map { Array($0.utf8) }, workingDirectory: cwd ?? task,
                    folders: [task, env])
                if case .file(let fd, let name) = verdict {
                    close(fd)
                    return .file(descriptor: 0, name: name)
                }
                return verdict
            }
            #expect(judge("result.txt") == .file(descriptor: 0, name: "result.txt"))
            #expect(judge(task + "/result.txt") == .file(descriptor: 0, name: "result.txt"))
            #expect(judge("sub/deep.txt") == .file(descriptor: 0, name: "deep.txt"))
            #expect(judge("sub/../result.txt") == .file(descriptor: 0, name: "result.txt"))
            // Relative to the command's working directory: the environment when it runs there.
            #expect(judge("made-in-env.csv", cwd: env) == .file(descriptor: 0, name: "made-in-env.csv"))
            #expect(judge(task + "/result.txt", cwd: env) == .file(descriptor: 0, name: "result.txt"))
            // A name in another encoding (Latin-1) is bytes on disk, and a stable key.
            if case .file(let fd, let name) = OutputJudge.judge(line: latin1, workingDirectory: task, folders: [task]) {
                close(fd)
                #expect(name == "café.txt")
            } else {
                Issue.record("a Latin-1 name was refused")
            }
            #expect(judge(nil) == .none)
            for bad in [
                "../outside.txt", base + "/outside.txt", "sub", "fifo", "shadow", "missing.txt", "/etc/passwd",
                "inside-link", "sublink/deep.txt", "../../../../etc/passwd", "result.txt", ".",
            ] {
                let cwd = bad == "result.txt" ? env : task  // result.txt is not in the environment
                guard case .rejected = judge(bad, cwd: cwd) else {
                    Issue.record("\(bad) was accepted")
                    continue
                }
            }
            // Without openat2 (kernels before 5.6) the walk refuses the same links.
            let root = open(task, O_RDONLY | O_DIRECTORY)
            defer { close(root) }
            let flags = O_RDONLY | O_NOFOLLOW | O_NONBLOCK
            for bad in ["inside-link", "sublink/deep.txt", "shadow", "missing"] {
                if case .success(let fd) = OutputJudge.walk(Array(bad.utf8), from: root, flags: flags) {
                    close(fd)
                    Issue.record("the walk opened \(bad)")
                }
            }
            if case .success(let fd) = OutputJudge.walk(Array("sub/deep.txt".utf8), from: root, flags: flags) {
                close(fd)
            } else {
                Issue.record("the walk refused sub/deep.txt")
            }
            // With a run-as user, the file must be that user's: a hard link to someone else's file (root's, where
            // fs.protected_hardlinks=0 lets a user make one) is refused. Here: our own file, judged for another uid.
            let me = getuid()
            if case .file(let fd, _) = OutputJudge.judge(
                line: Array("result.txt".utf8), workingDirectory: task, folders: [task], owner: me)
            {
                close(fd)
            } else {
                Issue.record("the owner's own file was refused")
            }
            let foreign = OutputJudge.judge(
                line: Array("result.txt".utf8), workingDirectory: task, folders: [task], owner: me &+ 1)
            #expect(
                foreign == .rejected("'result.txt' belongs to uid \(me), not to the command's user (uid \(me &+ 1))"))
            // Only the last non-empty line counts, and megabytes of stdout are fine.
            var big = [UInt8](repeating: UInt8(ascii: "x"), count: 3 << 20)
            big += Array("\nresult.txt\n\n  \n".utf8)
            LocalFile.write(dir + "/stdout", big)
            #expect(OutputJudge.lastLine(ofFile: dir + "/stdout") == "result.txt")
            for (printed, last) in [
                ("a\r\nb.out\r\n\r\n", "b.out"), ("only", "only"), ("\n \n\t\n", nil), ("", nil),
                ("x\n  spaced name.txt  \n", "spaced name.txt"),
            ] as [(String, String?)] {
                LocalFile.write(dir + "/stdout", Array(printed.utf8))
                #expect(OutputJudge.lastLine(ofFile: dir + "/stdout") == last, "\(printed.debugDescription)")
            }
        }
    }
}
