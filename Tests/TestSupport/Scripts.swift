import AWSCore
import FoundationEssentials
@preconcurrency import Glibc
import Testing
import Worker

/// Runs the repository's bash scripts (`scripts/setup-aws`, ...) and the AWS CLI against moto, as an operator would.
public enum Scripts {
    /// The repository's root, from this file's place in it.
    public static let repositoryRoot: String = {
        var parts = #filePath.split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast(3)  // Tests/TestSupport/Scripts.swift
        return parts.joined(separator: "/")
    }()

    public struct Result: Sendable {
        public var status: Int32?
        public var stdout: String
        public var stderr: String
        public var succeeded: Bool { status == 0 }
    }

    /// The environment of this test process, pointed at moto with moto's keys, and with no shared config files of
    /// the machine's user, so nothing outside the test decides where a call goes.
    public static func motoEnvironment(in directory: String) throws -> [String: String] {
        var environment = ProcessEnvironment.current()
        for key in environment.keys where key.hasPrefix("AWS_") { environment.removeValue(forKey: key) }
        let creds = try TestEnvironment.motoCredentials()
        environment["AWS_ACCESS_KEY_ID"] = creds.accessKeyID
        environment["AWS_SECRET_ACCESS_KEY"] = creds.secretAccessKey
        environment["AWS_CONFIG_FILE"] = directory + "/no-aws-config"
        environment["AWS_SHARED_CREDENTIALS_FILE"] = directory + "/no-aws-credentials"
        environment["AWS_EC2_METADATA_DISABLED"] = "true"
        return environment
    }

    /// Runs `scripts/<name> arguments` (or any program when `name` starts with `/` or has no `scripts/` form).
    public static func run(
        _ program: String, _ arguments: [String], environment: [String: String], directory: String,
        timeout: Int = 300
    ) async throws -> Result {
        let argv =
            program.hasPrefix("/")
            ? [program] + arguments : ["/bin/bash", "\(repositoryRoot)/scripts/\(program)"] + arguments
        let tag = "\(program.split(separator: "/").last ?? "x")-\(UInt32.random(in: 0..<UInt32.max))"
        let out = "\(directory)/\(tag).stdout", err = "\(directory)/\(tag).stderr"
        let outcome = try await ProcessRunner().run(
            argv: argv, environment: environment, directory: directory,
            stdoutPath: out, stderrPath: err, user: nil, timeout: timeout)
        var status: Int32?
        if case .exited(let code) = outcome { status = code }
        return Result(status: status, stdout: LocalFile.readText(out) ?? "", stderr: LocalFile.readText(err) ?? "")
    }

    /// `aws --endpoint-url <moto> --region us-east-1 --output json ARGS`, parsed.
    public static func awsCLI(_ arguments: [String], directory: String) async throws -> JSONValue {
        let environment = try motoEnvironment(in: directory)
        let aws =
            ProcessRunner.resolve("aws", in: directory, path: environment["PATH"] ?? "/usr/bin:/bin") ?? "/usr/bin/aws"
        let result = try await run(
            aws,
            [
                "--endpoint-url", try TestEnvironment.endpoint(.moto), "--region", "us-east-1",
                "--output", "json",
            ] + arguments, environment: environment, directory: directory)
        guard result.succeeded else {
            throw CLIError(message: "aws \(arguments.prefix(2).joined(separator: " ")): \(result.stderr)")
        }
        return result.stdout.trimmingSpaces.isEmpty ? .null : try JSONValue.parse(result.stdout)
    }

    public struct CLIError: Error, CustomStringConvertible {
        public var message: String
        public var description: String { message }
    }
}

/// Mounts a `size` tmpfs (`4m`) at `<dir>/disk` for the test: a small disk to fill. Needs root; detached on return.
/// - Returns: the folder the tmpfs is mounted on.
public func mountSmallDisk(in dir: String, size: String = "4m") async throws -> String {
    let disk = dir + "/disk"
    _ = mkdir(disk, 0o755)
    let mounted = try await Scripts.run(
        "/bin/mount", ["-t", "tmpfs", "-o", "size=\(size)", "tmpfs", disk],
        environment: ["PATH": "/usr/sbin:/usr/bin:/bin"], directory: dir)
    try #require(mounted.succeeded, "cannot mount a tmpfs: \(mounted.stderr)")
    return disk
}

/// Detaches what `mountSmallDisk` mounted.
public func unmountSmallDisk(_ disk: String) { _ = umount2(disk, Int32(MNT_DETACH)) }
