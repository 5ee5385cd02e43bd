import Operators
import Testing

/// The user-data `fleet launch` renders from the boot files compiled into the binary.
@Suite struct BootScriptTests {
    let release = BootScript.Release(
        s3URI: "s3://rel/_release/p.tar.gz", presignedURL: "https://rel.s3.amazonaws.com/p?X-Amz-Signature=ab",
        sha256: String(repeating: "0f", count: 32))

    @Test func aWorkersBootHasItsUnitItsReleaseAndItsParameters() throws {
        let text = try BootScript(release: release).worker(
            parameters: "parallelizer:\n  queueURL: 'q'\n  numThreads: '2'\n", shutdownGrace: 100)
        #expect(text.hasPrefix("#cloud-config\n"))
        #expect(!text.contains("@"), "a placeholder is left: \(text)")
        #expect(text.contains("      TimeoutStopSec=130\n"), "the stop timeout outlasts shutdownGrace, in the unit")
        #expect(text.contains("      ExecStart=/usr/local/bin/parallelizer run\n"))
        #expect(text.contains("aws s3 cp --only-show-errors 's3://rel/_release/p.tar.gz'"))
        #expect(text.contains("'https://rel.s3.amazonaws.com/p?X-Amz-Signature=ab'"))
        #expect(text.contains("echo '\(release.sha256)  '"))
        #expect(
            text.contains(
                "  - path: /etc/parallelizer/parameters.yaml\n    permissions: '0600'\n    content: |\n"
                    + "      parallelizer:\n        queueURL: 'q'\n        numThreads: '2'\n"), "\(text.prefix(800))")
    }

    @Test func theControllersCommandLineReachesItAsWritten() throws {
        let text = try BootScript(release: release).controller(arguments: [
            "--queue-url", "https://sqs.eu-west-1.amazonaws.com/1/q", "--note", "50% of $HOME's",
            "--on-complete", #"sed "s/\./,/" x"#,
        ])
        // systemd splits ExecStart= as a shell would and expands % and $: a word with a space is quoted, and both
        // are doubled.
        #expect(
            text.contains(
                #"ExecStart=/usr/local/bin/parallelizer controller --queue-url https://sqs.eu-west-1.amazonaws.com/1/q --note '50%% of $$HOME'"'"'s' --on-complete 'sed "s/\\./,/" x'"#
            ), "\(text)")
        #expect(
            text.contains("    content: |\n      parallelizer:\n\n  - path: /etc/systemd/system/parallelizer.service"),
            "the controller's instance carries no worker parameters")
    }

    @Test func whatCannotBootIsRefusedBeforeLaunch() throws {
        var quoted = release
        quoted.s3URI = "s3://rel/it's.tar.gz"
        #expect(throws: BootScript.Problem.self) { try BootScript(release: quoted) }
        let long = "parallelizer:\n  analysisProgram: '" + String(repeating: "x", count: BootScript.sizeLimit) + "'\n"
        #expect(throws: BootScript.Problem.self) {
            try BootScript(release: release).worker(parameters: long, shutdownGrace: 90)
        }
    }
}
