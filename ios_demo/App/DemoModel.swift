import CoreGraphics
import CoreML
import Foundation
#if canImport(MDExportCore)
import MDExportCore  // the local Swift package; without it, compile Sources/MDExportCore into the app
#endif
import SwiftUI

/// App state: the loaded bundle, the generation settings, progress and the result.
@MainActor
final class DemoModel: ObservableObject {
    @Published var prompt = "a red circle on a blue background"  // in the vocabulary of md-export's default model
    @Published var negativePrompt = ""
    @Published var steps = 20
    @Published var seed = 42  // Int: SwiftUI's `.number` format style is for Int
    @Published var guidanceScale = 7.5
    @Published var scheduler: SchedulerKind = .euler
    @Published var computeUnits: ComputeUnitsChoice = .cpuAndNeuralEngine

    @Published private(set) var status = "No model loaded"
    @Published private(set) var notes: [String] = []
    @Published private(set) var errorMessage: String?
    @Published private(set) var manifest: Manifest?
    @Published private(set) var folderDescription = ""
    @Published private(set) var isLoading = false
    @Published private(set) var isGenerating = false
    @Published private(set) var progress: GenerationProgress?
    @Published private(set) var image: CGImage?
    @Published private(set) var lastDuration: Double?

    private var bundle: LoadedBundle?
    private var pickedFolder: URL?
    private var scopedFolder: URL?
    private var generationTask: Task<Void, Never>?

    /// Guidance scale only means something for cfg-batch2 and embedded (LCM) bundles.
    var usesGuidanceScale: Bool {
        guard let manifest, let mode = try? manifest.pipeline.guidanceMode() else { return true }
        return mode != GuidanceMode.none
    }

    var canGenerate: Bool { bundle != nil && !isLoading && !isGenerating }

    /// Loads the picked folder if there is one, else the first default folder with a manifest.
    func load() async {
        guard !isLoading else { return }
        isLoading = true
        errorMessage = nil
        notes = []
        defer { isLoading = false }
        do {
            let folder = try pickedFolder ?? BundleLoader.firstFolderWithManifest()
            folderDescription = folder.path
            let units = computeUnits.units
            let loaded = try await BundleLoader.load(folder: folder, computeUnits: units) { message in
                Task { @MainActor in self.status = message }
            }
            bundle = loaded
            manifest = loaded.manifest
            notes = loaded.notes
            let pipeline = loaded.manifest.pipeline
            steps = pipeline.defaultSteps
            guidanceScale = pipeline.defaultGuidanceScale
            scheduler = SchedulerKind(rawValue: pipeline.scheduler) ?? .euler
            status = String(format: "Ready (%@, loaded in %.1f s)", loaded.folder.lastPathComponent, loaded.loadSeconds)
        } catch {
            bundle = nil
            manifest = nil
            status = "No model loaded"
            errorMessage = Self.message(for: error)
        }
    }

    /// A folder chosen with the document picker; keeps security-scoped access while it is in use.
    func usePickedFolder(_ url: URL) async {
        if let old = scopedFolder {
            old.stopAccessingSecurityScopedResource()
            scopedFolder = nil
        }
        if url.startAccessingSecurityScopedResource() {
            scopedFolder = url
        }
        pickedFolder = url
        bundle = nil
        await load()
    }

    func generate() {
        guard let bundle, !isGenerating else { return }
        let parameters = GenerationParameters(prompt: prompt, negativePrompt: negativePrompt, steps: steps, seed: UInt64(max(seed, 0)),
                                              guidanceScale: guidanceScale, scheduler: scheduler)
        let denoiser = bundle.denoiser
        isGenerating = true
        errorMessage = nil
        progress = GenerationProgress(step: 0, totalSteps: steps, timestep: 0)
        generationTask = Task.detached(priority: .userInitiated) {
            let start = Date()
            do {
                let tensor = try denoiser.generate(parameters) { step in
                    Task { @MainActor in self.progress = step }
                    return !Task.isCancelled
                }
                let rgba = try ImageConversion.rgba(fromNCHW: tensor)
                let rendered = ImageRendering.cgImage(from: rgba)
                let elapsed = Date().timeIntervalSince(start)
                await MainActor.run {
                    self.image = rendered
                    self.lastDuration = elapsed
                    self.isGenerating = false
                }
            } catch {
                let text = Self.message(for: error)
                await MainActor.run {
                    if (error as? DenoiserError) == .cancelled {
                        self.status = "Cancelled"
                    } else {
                        self.errorMessage = text
                    }
                    self.isGenerating = false
                }
            }
        }
    }

    func reportPickerError(_ error: Error) {
        errorMessage = "Could not open the folder: " + Self.message(for: error)
    }

    func cancel() {
        generationTask?.cancel()
    }

    func clearCompiledModels() {
        do {
            try BundleLoader.clearCache()
            status = "Compiled-model cache cleared; reload to recompile"
        } catch {
            errorMessage = Self.message(for: error)
        }
    }

    nonisolated static func message(for error: Error) -> String {
        if let localized = error as? LocalizedError, let description = localized.errorDescription {
            return description
        }
        return String(describing: error)
    }
}

enum ImageRendering {
    /// RGBA bytes (alpha ignored) as an sRGB CGImage.
    static func cgImage(from rgba: RGBAImage) -> CGImage? {
        guard let provider = CGDataProvider(data: Data(rgba.pixels) as CFData) else { return nil }
        let space = CGColorSpace(name: CGColorSpace.sRGB) ?? CGColorSpaceCreateDeviceRGB()
        return CGImage(width: rgba.width, height: rgba.height, bitsPerComponent: 8, bitsPerPixel: 32,
                       bytesPerRow: rgba.width * 4, space: space,
                       bitmapInfo: CGBitmapInfo(rawValue: CGImageAlphaInfo.noneSkipLast.rawValue),
                       provider: provider, decode: nil, shouldInterpolate: false, intent: .defaultIntent)
    }
}
