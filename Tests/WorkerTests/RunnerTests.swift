import AWSCore
@preconcurrency import Glibc
import TestSupport
import Testing
import Worker

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
            try await Task.sleep(nanoseconds: 200_000_000)
            // Dead means gone, or a zombie waiting for a reaper (this sandbox's init may not reap at once).
            let state = LocalFile.readText("/proc/\(pid)/stat")?.split(separator: ")").last?.split(separator: " ").first
            #expect(state == nil || state == "Z", "the grandchild survived (state \(state.map(String.init) ?? "?"))")
        }
    }

    @Test func aStopRequestInterrupts() async throws {
        try await withTemporaryDirectory { dir in
            // Cancelling the task that waits for the command is how a stop's grace ends it.
            let waiting = Task { try await run("sleep 30", in: dir) }
            try await Task.sleep(for: .milliseconds(300))
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

    @Test func outputJudging() async throws {
        try await withTemporaryDirectory { dir in
            let task = dir + "/task"
            _ = mkdir(task, 0o700)
            LocalFile.write(task + "/result.txt", Array("r".utf8))
            _ = mkdir(task + "/sub", 0o700)
            _ = mkfifo(task + "/fifo", 0o600)
            _ = symlink("/etc/shadow", task + "/shadow")
            _ = symlink(task + "/result.txt", task + "/inside-link")
            LocalFile.write(dir + "/outside.txt", Array("o".utf8))
            #expect(
                OutputJudge.judge(line: "result.txt", taskDirectory: task)
                    == .file(path: task + "/result.txt", name: "result.txt"))
            #expect(
                OutputJudge.judge(line: task + "/result.txt", taskDirectory: task)
                    == .file(path: task + "/result.txt", name: "result.txt"))
            #expect(
                OutputJudge.judge(line: "inside-link", taskDirectory: task)
                    == .file(path: task + "/result.txt", name: "inside-link"))
            #expect(OutputJudge.judge(line: nil, taskDirectory: task) == .none)
            for bad in ["../outside.txt", dir + "/outside.txt", "sub", "fifo", "shadow", "missing.txt", "/etc/passwd"] {
                guard case .rejected = OutputJudge.judge(line: bad, taskDirectory: task) else {
                    Issue.record("\(bad) was accepted")
                    continue
                }
            }
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
