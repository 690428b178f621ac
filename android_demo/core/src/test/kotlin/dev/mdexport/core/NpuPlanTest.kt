package dev.mdexport.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test

class NpuPlanTest {
    private val plan = NpuPlan.parse(TestSupport.resource("fixtures/npu_w8a8.json"))
    private val s8Elite = DeviceInfo("QTI", "SM8750", npuAvailable = true, gpuAvailable = true)

    @Test
    fun parsesModelsTargetsAndGroups() {
        assertEquals(listOf("Qualcomm_SM8750", "Qualcomm_SM8650"), plan.groups)
        assertEquals(setOf("text_encoder", "unet"), plan.models.keys)
        val u = plan.models.getValue("unet").targets.getValue("SM8650")
        assertEquals("compiled", u.status)
        assertEquals(675, u.opsOnNpu)
        assertEquals("unet/src/main/assets/model#group_Qualcomm_SM8650/unet.tflite", u.file)
        assertEquals(null, plan.models.getValue("text_encoder").targets.getValue("SM8750").file)
    }

    @Test
    fun compiledModelOnItsSocGoesNpuThenGpuThenCpu() {
        val c = plan.candidates("unet", "unet.tflite", s8Elite, sideloaded = false)
        assertEquals(listOf(Accelerator.NPU, Accelerator.GPU, Accelerator.CPU), c.map { it.accelerator })
        assertEquals(ModelSource.AiPackAsset("unet", "model/unet.tflite", "ai_pack/unet/src/main/assets/model#group_Qualcomm_SM8750/unet.tflite"), c[0].source)
        assertEquals("unet: NPU (Qualcomm SM8750, 675/675 ops compiled)", c[0].label)
        assertEquals(ModelSource.BundleFile("unet.tflite"), c[1].source)
        assertEquals("NPU failed to load", c[1].why)
    }

    @Test
    fun sideloadedBundleReadsTheCompiledFileFromItsAiPackFolder() {
        val c = plan.candidates("unet", "unet.tflite", DeviceInfo("Qualcomm", "sm8650", true, true), sideloaded = true)
        assertEquals(ModelSource.BundleFile("ai_pack/unet/src/main/assets/model#group_Qualcomm_SM8650/unet.tflite"), c[0].source)
    }

    @Test
    fun modelTheNpuRejectedSkipsTheNpuAndSaysWhy() {
        val c = plan.candidates("text_encoder", "text_encoder.tflite", s8Elite, sideloaded = false)
        assertEquals(listOf(Accelerator.GPU, Accelerator.CPU), c.map { it.accelerator })
        assertTrue(c[0].why, c[0].why.startsWith("text_encoder did not compile for SM8750: Op Dequantize does not support per-channel"))
    }

    @Test
    fun otherSocsVendorsAndMissingRuntimeFallBack() {
        val sm8550 = plan.candidates("unet", "unet.tflite", DeviceInfo("QTI", "SM8550", true, true), false)
        assertEquals(Accelerator.GPU, sm8550[0].accelerator)
        assertEquals("unet was not compiled for SM8550 (compiled for SM8750, SM8650)", sm8550[0].why)
        val tensor = plan.candidates("unet", "unet.tflite", DeviceInfo("Google", "Tensor G4", true, true), false)
        assertTrue(tensor[0].why, tensor[0].why.contains("not a Snapdragon"))
        val noRuntime = plan.candidates("unet", "unet.tflite", s8Elite.copy(npuAvailable = false), false)
        assertEquals(Accelerator.GPU, noRuntime[0].accelerator)
        assertTrue(noRuntime[0].why.contains("NPU accelerator is not available"))
        val old = plan.candidates("unet", "unet.tflite", DeviceInfo("", "", true, false), false)
        assertEquals(listOf(Accelerator.CPU), old.map { it.accelerator })
        assertEquals("the phone does not report its SoC; no GPU", old[0].why)
        val unknown = plan.candidates("vae_decoder", "vae_decoder.tflite", s8Elite, false)
        assertEquals(Accelerator.GPU, unknown[0].accelerator)
    }

    @Test
    fun loadFirstKeepsTheFirstThatLoadsAndNamesEveryFailure() {
        val c = plan.candidates("unet", "unet.tflite", s8Elite, sideloaded = false)
        val (v, used) = loadFirst(c) { if (it.accelerator == Accelerator.NPU) throw IllegalStateException("no libQnnHtp.so") else it.accelerator.name }
        assertEquals("GPU", v)
        assertEquals(Accelerator.GPU, used.accelerator)
        val e = TestSupport.assertThrows<BundleException> { loadFirst(c) { throw IllegalStateException("boom ${it.accelerator}") } }
        assertEquals("unet: no accelerator could load it (NPU: boom NPU; GPU: boom GPU; CPU: boom CPU)", e.message)
    }

    @Test
    fun rejectsOtherSchemaVersions() {
        val e = TestSupport.assertThrows<BundleException> { NpuPlan.parse("{\"schema_version\": 2, \"groups\": [], \"models\": {}}") }
        assertTrue(e.message!!.contains("schema_version 2"))
    }
}
