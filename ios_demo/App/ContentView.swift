#if canImport(MDExportCore)
import MDExportCore  // the local Swift package; without it, compile Sources/MDExportCore into the app
#endif
import SwiftUI
import UniformTypeIdentifiers

@MainActor
struct ContentView: View {
    @StateObject private var model = DemoModel()
    @State private var showFolderPicker = false

    var body: some View {
        NavigationStack {
            Form {
                modelSection
                promptSection
                generateSection
                if let message = model.errorMessage {
                    Section("Error") {
                        Text(message)
                            .foregroundStyle(.red)
                            .textSelection(.enabled)
                    }
                }
                if let image = model.image {
                    Section("Result") {
                        Image(decorative: image, scale: 1)
                            .resizable()
                            .interpolation(.none)
                            .aspectRatio(contentMode: .fit)
                        if let seconds = model.lastDuration {
                            Text(String(format: "%.2f s for %ld steps", seconds, model.steps))
                                .font(.footnote)
                                .foregroundStyle(.secondary)
                        }
                    }
                }
            }
            .navigationTitle("md-export demo")
            .fileImporter(isPresented: $showFolderPicker, allowedContentTypes: [.folder]) { result in
                switch result {
                case let .success(url):
                    Task { await model.usePickedFolder(url) }
                case let .failure(error):
                    model.reportPickerError(error)
                }
            }
            .task { await model.load() }
        }
    }

    private var modelSection: some View {
        Section("Model") {
            HStack {
                if model.isLoading { ProgressView() }
                Text(model.status)
            }
            if let manifest = model.manifest {
                let p = manifest.pipeline
                LabeledContent("Image", value: "\(p.imageWidth) x \(p.imageHeight)")
                LabeledContent("Guidance", value: p.guidance)
                LabeledContent("Default scheduler", value: p.scheduler)
                if let version = manifest.mdExportVersion {
                    LabeledContent("md-export", value: version)
                }
                LabeledContent("Parity", value: manifest.parity?.status ?? "unknown")
                if let chunks = manifest.models["unet"]?.chunks {
                    LabeledContent("UNet", value: "\(chunks.count) chunks")
                }
            }
            ForEach(model.notes, id: \.self) { note in
                Text(note).font(.footnote).foregroundStyle(.orange)
            }
            Picker("Compute units", selection: $model.computeUnits) {
                ForEach(ComputeUnitsChoice.allCases) { choice in
                    Text(choice.rawValue).tag(choice)
                }
            }
            Button("Choose model folder…") { showFolderPicker = true }
                .disabled(model.isLoading || model.isGenerating)
            Button("Reload") { Task { await model.load() } }
                .disabled(model.isLoading || model.isGenerating)
            Button("Clear compiled-model cache", role: .destructive) { model.clearCompiledModels() }
                .disabled(model.isLoading || model.isGenerating)
        }
    }

    private var promptSection: some View {
        Section("Prompt") {
            TextField("Prompt", text: $model.prompt, axis: .vertical)
                .lineLimit(2 ... 5)
            if model.usesGuidanceScale {
                TextField("Negative prompt (optional)", text: $model.negativePrompt, axis: .vertical)
                    .lineLimit(1 ... 3)
            }
            Stepper("Steps: \(model.steps)", value: $model.steps, in: 1 ... 100)
            HStack {
                Text("Seed")
                TextField("Seed", value: $model.seed, format: .number)
                    .keyboardType(.numberPad)
                    .multilineTextAlignment(.trailing)
            }
            if model.usesGuidanceScale {
                VStack(alignment: .leading) {
                    Text(String(format: "Guidance scale: %.1f", model.guidanceScale))
                    Slider(value: $model.guidanceScale, in: 1 ... 15, step: 0.5)
                }
            }
            Picker("Scheduler", selection: $model.scheduler) {
                ForEach(SchedulerKind.allCases) { kind in
                    Text(kind.rawValue).tag(kind)
                }
            }
        }
    }

    private var generateSection: some View {
        Section {
            if model.isGenerating {
                Button("Cancel", role: .cancel) { model.cancel() }
            } else {
                Button("Generate") { model.generate() }
                    .disabled(!model.canGenerate)
            }
            if let progress = model.progress, model.isGenerating {
                ProgressView(value: Double(progress.step), total: Double(max(progress.totalSteps, 1))) {
                    Text("Step \(progress.step) of \(progress.totalSteps)")
                }
            }
        }
    }
}
