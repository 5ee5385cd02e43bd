/// The user-data an instance boots on: cloud-init installs the release (with the instance role, or else a
/// presigned URL), checks its SHA-256, writes the systemd unit and starts it. A worker's parameters ride along as
/// the `parallelizer:` map of a file cloud-init writes (`/etc/parallelizer/parameters.yaml`), which the daemon
/// reads back from the user-data in IMDS. The files are `Boot/` in this target, compiled into the
/// binary, so what `fleet launch` puts in a template is what `fleet render` prints, on any machine.
public struct BootScript: Sendable {
    /// Where the release is, three ways: its S3 URI (for an image with the AWS CLI), a presigned URL (for one
    /// without), and its SHA-256, which the boot checks either way.
    public struct Release: Sendable, Equatable {
        public var s3URI: String
        public var presignedURL: String
        public var sha256: String

        public init(s3URI: String, presignedURL: String, sha256: String) {
            self.s3URI = s3URI
            self.presignedURL = presignedURL
            self.sha256 = sha256
        }
    }

    public struct Problem: Error, CustomStringConvertible, Equatable {
        public var description: String
    }

    /// EC2 refuses user-data over 16 KiB (before its base64).
    public static let sizeLimit = 16384

    public let release: Release
    /// Seconds a system whose install failed stays up before it powers itself off: time to look over SSH, at the
    /// cost of a short bill.
    public let failedBootPause: Int

    public init(release: Release, failedBootPause: Int = 600) throws(Problem) {
        self.failedBootPause = failedBootPause
        // The values sit between single quotes in a shell script.
        for value in [release.s3URI, release.presignedURL, release.sha256]
        where value.contains("'") || value.contains("\n") {
            throw Problem(description: "the release's location has a quote or a line break: \(value)")
        }
        self.release = release
    }

    /// A worker's user-data: `parameters` is the daemon's rendered map (`UserDataRenderer`, whose first line is
    /// `parallelizer:`); systemd's stop timeout is `shutdownGrace` + 30 s, so that the daemon's own grace ends first.
    public func worker(parameters: String, shutdownGrace: Int) throws(Problem) -> String {
        try render(
            unit: Self.text(PackageResources.parallelizer_service), stopTimeout: shutdownGrace + 30,
            parameters: parameters)
    }

    /// The controller's user-data: the same install, and a unit that runs `parallelizer controller arguments`.
    public func controller(arguments: [String]) throws(Problem) -> String {
        let unit = Self.text(PackageResources.parallelizer_controller_service)
            .replacing("@CONTROLLER_ARGS@", with: arguments.map(Self.systemdWord).joined(separator: " "))
        return try render(unit: unit, stopTimeout: nil, parameters: "parallelizer:\n")
    }

    func render(unit: String, stopTimeout: Int?, parameters: String) throws(Problem) -> String {
        var unit = unit
        if let stopTimeout { unit = unit.replacing("TimeoutStopSec=120", with: "TimeoutStopSec=\(stopTimeout)") }
        let indented = unit.split(separator: "\n", omittingEmptySubsequences: false)
            .map { line in line.isEmpty ? "" : "      " + line }
        // The unit's text ends with a line break: its last (empty) line is not carried.
        let unitBlock = (indented.last == "" ? indented.dropLast() : indented[...]).joined(separator: "\n")
        // The rendered map's first line is the template's own `parallelizer:`; the rest goes into the parameters
        // file's content block, six spaces in.
        var lines = parameters.split(separator: "\n", omittingEmptySubsequences: false).dropFirst()
        while lines.last == "" { lines = lines.dropLast() }
        lines = lines.map { "      " + $0 }[...]
        // The parameters last: a value that spells another placeholder stays as written.
        let text = Self.text(PackageResources.user_data_template_yaml)
            .replacing("@SERVICE_UNIT@", with: unitBlock)
            .replacing("@RELEASE_S3@", with: release.s3URI)
            .replacing("@RELEASE_URL@", with: release.presignedURL)
            .replacing("@RELEASE_SHA256@", with: release.sha256)
            .replacing("@FAILED_BOOT_PAUSE@", with: String(failedBootPause))
            .replacing("@PARAMETERS@", with: lines.joined(separator: "\n"))
        guard text.utf8.count <= Self.sizeLimit else {
            throw Problem(
                description:
                    "the user-data is \(text.utf8.count) bytes; EC2 allows \(Self.sizeLimit) (shorten the parameters)")
        }
        return text
    }

    static func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

    /// One word of an `ExecStart=` line. systemd splits it as a shell would (a quoted word stays whole) and expands
    /// `%` specifiers and `$VARIABLES`: those are doubled, so the word reaches the program as written.
    static func systemdWord(_ word: String) -> String {
        let plain =
            !word.isEmpty
            && word.unicodeScalars.allSatisfy { scalar in
                (scalar.isASCII && (scalar.properties.isAlphabetic || ("0"..."9").contains(scalar)))
                    || "@%+=:,./-_".unicodeScalars.contains(scalar)
            }
        // systemd reads C escapes even inside quotes: a backslash is doubled to stay one.
        let quoted = plain ? word : "'" + word.replacing("\\", with: "\\\\").replacing("'", with: #"'"'"'"#) + "'"
        return quoted.replacing("%", with: "%%").replacing("$", with: "$$")
    }
}
