// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "parallelizer",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "parallelizer", targets: ["parallelizer"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    ],
    targets: [
        // C libraries, each behind one small shim header.
        .systemLibrary(name: "CCurl", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),
        .systemLibrary(name: "CCrypto", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        // zlib (libcurl links it already): the environment archive is unpacked in-process.
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),

        // Pure SigV4: canonical request, string to sign, derived keys. No I/O.
        .target(name: "AWSSigV4", dependencies: ["CCrypto"]),
        // HTTP over libcurl easy handles: streaming bodies, timeouts, connection reuse.
        .target(name: "HTTPCurl", dependencies: ["CCurl", "CChecksum"]),
        // CRC-32C with the CPU's instruction where there is one: upload checksums computed as the bytes go out.
        .target(name: "CChecksum"),
        // Credentials chain (with `credential_process`, started through CSpawn), endpoints/region, retries, clock skew,
        // typed AWS errors, IMDS, XML.
        .target(
            name: "AWSCore",
            dependencies: ["AWSSigV4", "HTTPCurl", "CSpawn", .product(name: "Logging", package: "swift-log")]
        ),
        // S3, SQS, DynamoDB and EC2 clients.
        .target(name: "AWSServices", dependencies: ["AWSCore", .product(name: "Logging", package: "swift-log")]),
        // fork/exec with a new process group, a user switch and redirected output: a few lines of C that Swift
        // cannot safely do between fork and exec.
        .target(name: "CSpawn"),
        // glibc specifics: the portable release's link-time compatibility (hypotf), the allocator's mmap threshold.
        .target(name: "CGlibcCompat"),
        // The DynamoDB task ledger: its schema, the daemon's writer and the operators' reader.
        .target(name: "TaskLedger", dependencies: ["AWSServices", .product(name: "Logging", package: "swift-log")]),
        // The daemon: configuration, message parsing, the task runner, the slot loop and its lifecycle.
        .target(
            name: "Worker",
            dependencies: [
                "AWSServices", "TaskLedger", "CSpawn", "CZlib", .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The operators' tools: enqueue, status, the controller. They read what the daemon writes, never run it.
        .target(
            name: "Operators",
            dependencies: ["AWSServices", "TaskLedger", .product(name: "Logging", package: "swift-log")],
            // The instance's boot files, compiled into the binary as bytes (no Foundation bundle): `fleet launch`
            // renders the user-data from them.
            resources: [
                .embedInCode("Boot/user-data.template.yaml"), .embedInCode("Boot/parallelizer.service"),
                .embedInCode("Boot/parallelizer-controller.service"),
            ]
        ),
        .executableTarget(
            name: "parallelizer",
            dependencies: [
                "AWSServices",
                "Worker",
                "Operators",
                "CGlibcCompat",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),

        .target(
            name: "TestSupport",
            dependencies: ["AWSServices", "Worker", "TaskLedger", .product(name: "Logging", package: "swift-log")],
            path: "Tests/TestSupport"
        ),
        .testTarget(name: "AWSSigV4Tests", dependencies: ["AWSSigV4", "TestSupport"]),
        .testTarget(name: "HTTPCurlTests", dependencies: ["HTTPCurl", "CChecksum", "TestSupport"]),
        .testTarget(name: "AWSCoreTests", dependencies: ["AWSServices", "TestSupport"]),
        .testTarget(name: "WorkerTests", dependencies: ["Worker", "TestSupport"]),
        .testTarget(name: "OperatorsTests", dependencies: ["Operators", "TestSupport"]),
        .testTarget(
            name: "IntegrationTests", dependencies: ["AWSServices", "Worker", "Operators", "TaskLedger", "TestSupport"]),
    ],
    swiftLanguageModes: [.v6]
)
